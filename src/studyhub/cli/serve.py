"""``studyhub serve``: the StudyHub API (uvicorn), writer on the primary (through the pooler
when there is one), reads on the replica while its lag is in bounds."""

from __future__ import annotations

from typing import Annotated

import typer

from studyhub.cli.common import ProfileOpt, console


def serve(
    profile: ProfileOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    pooler: Annotated[
        bool | None,
        typer.Option("--pooler/--no-pooler",
                     help="Write through PgBouncer (default: when the profile has one).",
                     show_default=False),
    ] = None,
    replica: Annotated[
        bool | None,
        typer.Option("--replica/--no-replica",
                     help="Read from the replica while its lag is in bounds "
                          "(default: when the profile has one).",
                     show_default=False),
    ] = None,
    max_replica_lag: Annotated[
        float | None,
        typer.Option("--max-replica-lag", min=0.01,
                     help="Seconds of replay lag beyond which reads go to the primary "
                          "(default 1.0, or STUDYHUB_API_MAX_REPLICA_LAG_S).",
                     show_default=False),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request.")] = False,
) -> None:
    """Run the StudyHub API. The token secret comes from STUDYHUB_API_SECRET(_FILE) or, for
    the local profile, a 0600 file under the cluster's secrets/; never from the command line."""
    import uvicorn

    from studyhub.api.app import create_app
    from studyhub.api.settings import ApiSettings

    overrides: dict[str, object] = {"profile": profile}
    if pooler is not None:
        overrides["use_pooler"] = pooler
    if replica is not None:
        overrides["use_replica"] = replica
    if max_replica_lag is not None:
        overrides["max_replica_lag_s"] = max_replica_lag
    settings = ApiSettings(**overrides)
    app = create_app(settings)
    where = app.state.topology.describe(app.state.profile)
    console.print(
        f"StudyHub API on http://{host}:{port} (docs at /docs) · profile {app.state.profile.name}"
        f" · writes → {where['writer']} · reads → {where['reader']}"
        + (f", max lag {settings.max_replica_lag_s:g} s" if app.state.topology.replica else ""),
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info",
                lifespan="on", server_header=False)
