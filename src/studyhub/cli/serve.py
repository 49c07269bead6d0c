"""``studyhub serve``: the StudyHub API (uvicorn), writer on the primary (through the pooler
when there is one), reads on the replica while its lag is in bounds."""

from __future__ import annotations

import copy
import os
from typing import Annotated

import typer

from studyhub.cli.common import ProfileOpt, console, err_console
from studyhub.ops.connection_budget import connection_budget
from studyhub.profiles import resolve_profile
from studyhub.serving import API_APP, ENV_PREFIX, ApiSettings, choose_topology, load_token_secret

WORKER_HEALTHCHECK_TIMEOUT_S = 30


def serve(
    profile: ProfileOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, max=64,
                     help="uvicorn worker processes (default 1, or STUDYHUB_API_WORKERS); each "
                          "has its own connection pools.", show_default=False),
    ] = None,
    pool_size: Annotated[
        int | None,
        typer.Option("--pool-size", min=1,
                     help="Connections per worker in the writer's pool, and the reader's unless "
                          "STUDYHUB_API_REPLICA_POOL_SIZE is set (default 20 direct, 40 through "
                          "the pooler, or STUDYHUB_API_POOL_SIZE).", show_default=False),
    ] = None,
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
    read_endpoints: Annotated[
        str | None,
        typer.Option("--read-endpoints",
                     help="Which of the profile's read endpoints to read from, by name, "
                          "comma-separated (default: all; STUDYHUB_API_READ_ENDPOINTS).",
                     show_default=False),
    ] = None,
    preferred_region: Annotated[
        str | None,
        typer.Option("--preferred-region",
                     help="Prefer read endpoints in this region (STUDYHUB_API_PREFERRED_REGION).",
                     show_default=False),
    ] = None,
    max_stale_read: Annotated[
        float | None,
        typer.Option("--max-stale-read", min=0,
                     help="While the primary is down, serve reads from a replica at most this "
                          "many seconds stale (default 60, STUDYHUB_API_MAX_STALE_READ_S).",
                     show_default=False),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request.")] = False,
) -> None:
    """Run the StudyHub API. The token secret comes from STUDYHUB_API_SECRET(_FILE) or, for
    the local profile, a 0600 file under the cluster's secrets/; never from the command line
    (worker processes get it the same way)."""
    import uvicorn  # deferred: loads uvicorn's server stack, which only this command needs

    overrides: dict[str, object] = {
        "profile": profile, "workers": workers, "pool_size": pool_size, "use_pooler": pooler,
        "use_replica": replica, "max_replica_lag_s": max_replica_lag,
        "read_endpoints": read_endpoints, "preferred_region": preferred_region,
        "max_stale_read_s": max_stale_read,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = ApiSettings(**overrides)
    # Resolves the profile, the topology and the token secret here, once: a configuration error
    # is one line before any worker starts, and the local secret file exists before several
    # workers could race to create it.
    prof = resolve_profile(settings.profile)
    topology = choose_topology(prof, settings)
    load_token_secret(prof)
    where = topology.describe(prof)
    console.print(
        f"StudyHub API on http://{host}:{port} (docs at /docs) · profile {prof.name}"
        f" · writes → {where['writer']} · reads → {where['reader']}"
        + (f", max lag {settings.max_replica_lag_s:g} s" if topology.replica else ""),
        highlight=False,
    )
    budgets = connection_budget(prof, settings, topology)
    console.print(
        f"{settings.workers} worker(s); connections at most: " + ", ".join(
            f"{b.server} {b.connections}"
            + (f" of max_connections {b.max_connections}" if b.max_connections else "")
            for b in budgets),
        highlight=False,
    )
    for b in budgets:
        if b.over_limit:
            fix = ("write through --pooler or use a smaller --pool-size" if b.server == "primary"
                   else "set a smaller STUDYHUB_API_REPLICA_POOL_SIZE")
            err_console.print(
                f"warning: {settings.workers} worker(s) × their pools may open {b.connections} "
                f"connections to the {b.server}, more than its max_connections "
                f"{b.max_connections} minus {b.superuser_reserved} reserved: expect 'sorry, too "
                f"many clients already' under load; {fix}",
                style="yellow", highlight=False)
    # uvicorn's own logging, plus the API's (replica state changes, database errors, each
    # worker's routing summary at shutdown) at INFO through the same handler.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["studyhub"] = {"handlers": ["default"], "level": "INFO",
                                         "propagate": False}
    # The app is built by its factory (API_APP, imported by name: the command line imports no
    # part of the API) from the environment — in this process with one worker, in each spawned
    # worker process otherwise (nothing is inherited but the environment; the secret stays in
    # env or its 0600 file, never on argv).
    for key, value in overrides.items():
        os.environ[ENV_PREFIX + key.upper()] = str(value).lower() if isinstance(value, bool) \
            else str(value)
    # A worker that has not answered the supervisor's ping within timeout_worker_healthcheck is
    # killed and replaced; uvicorn's 5 s is shorter than a spawn + imports + engine setup takes
    # on a busy 2-core machine (workers were killed in a loop), so allow 30 s.
    uvicorn.run(API_APP, factory=True, workers=settings.workers, host=host, port=port,
                access_log=access_log, log_level="info", log_config=log_config, lifespan="on",
                server_header=False, timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S)
