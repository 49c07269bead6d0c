"""``studyhub dashboard``: the operations dashboard in the browser (uvicorn). Every profile
from one install; the access token comes from the environment, never from the command line."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from studyhub.cli.common import ProfileOpt, console
from studyhub.profiles import load_settings
from studyhub.serving import DASHBOARD_APP, UVICORN_OPTIONS, DashboardSettings, load_dashboard_token


def dashboard(
    profile: ProfileOpt = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but loopback needs STUDYHUB_DASHBOARD_TOKEN "
             "(or STUDYHUB_DASHBOARD_TOKEN_FILE).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8100,
    database: Annotated[str | None, typer.Option(
        "--database", "-d",
        help="Show another database of each profile's server (default: the profile's).")] = None,
    allow_actions: Annotated[list[str] | None, typer.Option(
        "--allow-actions",
        help="Enable cancel / terminate / create index on this protected profile "
             "(production), as naming it with --profile does (repeatable).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request.")] = False,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy",
        help="Address or network of a reverse proxy in front (repeatable): only then is the "
             "client's address read from --forwarded-header, and failed logins also counted "
             "per address.")] = None,
    forwarded_header: Annotated[str, typer.Option(
        "--forwarded-header",
        help="The header the trusted proxies set: X-Forwarded-For or Forwarded.")]
        = "X-Forwarded-For",
) -> None:
    """Serve the operations dashboard: health, queries (with history and EXPLAIN), indexes
    (advice, create concurrently), live activity (cancel, terminate), space and growth,
    backups and the erasure audit — for local, staging and production at once. The query and
    growth history comes from `studyhub agent` (its capture job); the pages say when it is
    stale. --profile sets
    the profile it opens on; naming production there (or with --allow-actions) is what
    enables actions on it. Read-only profiles never act."""
    import uvicorn  # deferred: loads uvicorn's server stack, which only this command needs

    default = profile or load_settings().profile
    explicit = set(allow_actions or []) | ({profile} if profile else set())
    settings = DashboardSettings(default_profile=default, explicit_profiles=frozenset(explicit),
                                 database=database, host=host, token=load_dashboard_token(),
                                 trusted_proxies=tuple(trusted_proxy or ()),
                                 forwarded_header=forwarded_header)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"StudyHub ops dashboard on http://{shown}:{port}/p/{default}/ · "
        + ("access token required" if settings.token else "loopback only, no token")
        + (f" · actions enabled on protected: {', '.join(sorted(explicit))}" if explicit else "")
        + (f" · client addresses from {settings.proxy_trust().describe()}"
           if settings.trusted_proxies else ""),
        highlight=False)
    # The app is built by its factory (DASHBOARD_APP, imported by name: the command line imports
    # no part of the dashboard) from these settings, handed over in the environment (no token:
    # the app reads it from its own variable or file, as above).
    os.environ.update(settings.to_environment())
    uvicorn.run(DASHBOARD_APP, factory=True, host=host, port=port, access_log=access_log,
                log_level="info", **UVICORN_OPTIONS)
