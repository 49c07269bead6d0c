"""What starting the two web servers needs, below the renderers that start them (``studyhub
serve``, ``studyhub dashboard`` in ``studyhub.cli``) and the apps they start (``studyhub.api``,
``studyhub.dashboard``), so that neither imports the other: each app's settings, where its
secret comes from, and the name of the factory uvicorn imports, which reads the settings back
from the environment.

- ``api``: ``ApiSettings`` (``STUDYHUB_API_*``), the token secret, the topology (pooler?
  replica?), ``API_APP``.
- ``dashboard``: ``DashboardSettings`` (handed over as ``STUDYHUB_DASHBOARD_SETTINGS``), its
  access token, ``DASHBOARD_APP`` and the uvicorn options it runs with.
- ``forwarded``: the client's address behind the reverse proxies the operator named.
"""

from studyhub.serving.api import (
    API_APP,
    ENV_PREFIX,
    LOCAL_SECRET_NAME,
    MIN_SECRET_CHARS,
    SECRET_ENV,
    SECRET_FILE_ENV,
    ApiSettings,
    Topology,
    choose_topology,
    load_token_secret,
    local_secret_path,
)
from studyhub.serving.dashboard import (
    DASHBOARD_APP,
    MIN_TOKEN_CHARS,
    SETTINGS_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    UVICORN_OPTIONS,
    DashboardSettings,
    is_loopback,
    load_dashboard_token,
)
from studyhub.serving.forwarded import ForwardedError, ProxyTrust

__all__ = [
    "API_APP", "ApiSettings", "DASHBOARD_APP", "DashboardSettings", "ENV_PREFIX",
    "ForwardedError", "LOCAL_SECRET_NAME", "MIN_SECRET_CHARS", "MIN_TOKEN_CHARS", "ProxyTrust",
    "SECRET_ENV", "SECRET_FILE_ENV", "SETTINGS_ENV", "TOKEN_ENV", "TOKEN_FILE_ENV", "Topology",
    "UVICORN_OPTIONS", "choose_topology", "is_loopback", "load_dashboard_token",
    "load_token_secret", "local_secret_path",
]
