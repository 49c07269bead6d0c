"""How the dashboard runs: which profile it opens on, which protected profiles may be acted
on, where it listens and the access token (from the environment, never from argv).

``studyhub dashboard`` checks the settings, puts them in the environment
(``DashboardSettings.to_environment``: everything but the token, which the app reads from its
own variable or file again) and starts uvicorn with ``DASHBOARD_APP``, the factory that reads
them back (``DashboardSettings.from_environment``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import SecretStr

from studyhub.errors import ConfigError
from studyhub.profiles import PROFILE_NAMES
from studyhub.serving.forwarded import ProxyTrust

# The app factory uvicorn imports (by name: nothing here imports the dashboard).
DASHBOARD_APP = "studyhub.dashboard.app:dashboard_from_environment"
# How `studyhub dashboard` (and the tests) run uvicorn. No proxy headers: uvicorn would otherwise
# take the client address from X-Forwarded-For whenever the peer is 127.0.0.1, which anyone on
# the machine can send; the dashboard reads that header itself, and only from the proxies the
# operator named (DashboardSettings.trusted_proxies).
UVICORN_OPTIONS = {"proxy_headers": False, "server_header": False, "lifespan": "on"}
# Where `studyhub dashboard` hands its settings to the app factory (JSON; no token in it).
SETTINGS_ENV = "STUDYHUB_DASHBOARD_SETTINGS"

TOKEN_ENV = "STUDYHUB_DASHBOARD_TOKEN"
TOKEN_FILE_ENV = "STUDYHUB_DASHBOARD_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_dashboard_token() -> SecretStr | None:
    """``$STUDYHUB_DASHBOARD_TOKEN`` or the first line of the 0600 file named by
    ``$STUDYHUB_DASHBOARD_TOKEN_FILE``; None when neither is set."""
    if os.environ.get(TOKEN_ENV):
        value, source = os.environ[TOKEN_ENV].strip(), f"env {TOKEN_ENV}"
    elif os.environ.get(TOKEN_FILE_ENV):
        path = Path(os.environ[TOKEN_FILE_ENV])
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"{TOKEN_FILE_ENV} names {path}, which does not exist") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"dashboard token file {path} is readable by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
        lines = path.read_text().splitlines()
        value, source = (lines[0].strip() if lines else ""), f"file {path}"
    else:
        return None
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the dashboard token from {source} is shorter than "
                          f"{MIN_TOKEN_CHARS} characters")
    return SecretStr(value)


@dataclass(frozen=True)
class DashboardSettings:
    """``explicit_profiles``: profiles named on the command line (``--profile``,
    ``--allow-actions``) — the only protected profiles (production) whose actions are enabled,
    as on the command line where production must be named explicitly."""

    default_profile: str = "local"
    explicit_profiles: frozenset[str] = frozenset()
    database: str | None = None  # another database of each profile's server (default: its own)
    host: str = "127.0.0.1"
    token: SecretStr | None = field(default=None, repr=False)
    # the history pages (queries, space) say it is stale when the newest statement or size
    # snapshot is older than this (studyhub agent's capture job stores them every 5 min)
    history_stale_after_s: float = 900.0
    statement_timeout_ms: int = 15_000
    connect_timeout_s: int = 5
    max_sessions: int = 1000
    # Reverse proxies in front of the dashboard (addresses or networks) and the header they set
    # (X-Forwarded-For or Forwarded): only then is a client address read from that header, and
    # failed logins also counted per address (see studyhub.serving.forwarded).
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "X-Forwarded-For"

    def __post_init__(self) -> None:
        self.proxy_trust()  # a bad address or header name: ConfigError now
        for name in {self.default_profile, *self.explicit_profiles}:
            if name not in PROFILE_NAMES:
                raise ConfigError(f"unknown profile {name!r}; choose one of "
                                  f"{', '.join(PROFILE_NAMES)}")
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to listen on {self.host} without an access token: set {TOKEN_ENV} "
                f"(or {TOKEN_FILE_ENV}, a 0600 file) to at least {MIN_TOKEN_CHARS} random "
                "characters, or listen on 127.0.0.1")

    def proxy_trust(self) -> ProxyTrust:
        return ProxyTrust.configure(self.trusted_proxies, self.forwarded_header)

    def to_environment(self) -> dict[str, str]:
        """The settings as ``from_environment`` reads them back, token left out."""
        values: dict[str, Any] = {f.name: getattr(self, f.name)
                                  for f in dataclasses.fields(self) if f.name != "token"}
        values["explicit_profiles"] = sorted(self.explicit_profiles)
        values["trusted_proxies"] = list(self.trusted_proxies)
        return {SETTINGS_ENV: json.dumps(values)}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "DashboardSettings":
        """The settings ``to_environment`` put in ``environ`` (the defaults without them), with
        the token from its own variable or 0600 file (``load_dashboard_token``)."""
        values = json.loads(environ[SETTINGS_ENV]) if environ.get(SETTINGS_ENV) else {}
        values["explicit_profiles"] = frozenset(values.get("explicit_profiles", ()))
        values["trusted_proxies"] = tuple(values.get("trusted_proxies", ()))
        return cls(**values, token=load_dashboard_token())
