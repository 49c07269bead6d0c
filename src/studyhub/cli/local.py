"""``studyhub local``: the embedded PostgreSQL cluster under $STUDYHUB_HOME."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import JsonOpt, YesOpt, DryRunOpt, console, err_console, print_json
from studyhub.connect import child_env
from studyhub.errors import RefusedError
from studyhub.local import ClusterStatus, LocalCluster, proc
from studyhub.profiles import ROLES

app = typer.Typer(help="Start, stop and reach the local embedded PostgreSQL.", no_args_is_help=True)

RoleOpt = Annotated[
    str, typer.Option("--role", "-r", help=f"One of: {', '.join(ROLES)}.")
]
DatabaseOpt = Annotated[
    str | None, typer.Option("--database", "-d", help="Database name (default: studyhub).")
]
ReplicaOpt = Annotated[
    str | None, typer.Option("--replica", help="With --role replica: which one (replica, "
                                               "replica2 …; default the first).")
]


def render_status(status: ClusterStatus) -> None:
    table = Table(title=f"local cluster · {status.home}", title_justify="left")
    for col in ("node", "port", "state", "pid", "detail"):
        table.add_column(col)

    def state(running: bool) -> Text:
        return Text("running", style="green") if running else Text("stopped", style="red")

    p = status.primary
    table.add_row("primary", str(p.port or "-"), state(p.running), str(p.pid or "-"),
                  p.detail or (f"PostgreSQL {status.server_version}" if status.server_version else ""))
    for r in status.replicas:
        detail = "streaming" if r.streaming else "not streaming"
        if r.lag_bytes is not None:
            detail += f", replay lag {r.lag_bytes} bytes"
        table.add_row(r.name, str(r.port or "-"), state(r.running), str(r.pid or "-"), detail)
    if status.pooler:
        b = status.pooler
        table.add_row("pooler", str(b.port), state(b.running), str(b.pid or "-"),
                      "pgbouncer, transaction pooling")
    console.print(table)


@app.command()
def up(
    replica: Annotated[bool, typer.Option("--replica", help="Add a streaming replica.")] = False,
    replicas: Annotated[int | None, typer.Option(
        "--replicas",
        help="Run N streaming replicas (replica, replica2 …; each its own slot, port and data "
             "directory). More that exist keep running: remove one with "
             "'studyhub cluster replica remove NAME'.")] = None,
    pooler: Annotated[bool, typer.Option("--pooler", help="Add PgBouncer (transaction mode).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create (first time) and start the local cluster. Safe to repeat; recovers after a crash."""
    cluster = LocalCluster()
    with err_console.status("starting local cluster") as spinner:
        # a spinner's text is parsed as markup unless it is a Text
        status = cluster.up(replica=replica, pooler=pooler, replicas=replicas,
                            progress=lambda msg: spinner.update(Text(msg)))
    if json_:
        print_json(status)
    else:
        render_status(status)


@app.command()
def status(json_: JsonOpt = False) -> None:
    """Show which local servers run, on which ports, and whether each replica streams."""
    st = LocalCluster().status()
    if json_:
        print_json(st)
    else:
        render_status(st)


@app.command()
def down() -> None:
    """Stop forks, pooler, replicas and primary (fast shutdown). Data is kept."""
    st = LocalCluster().down()
    render_status(st)


@app.command()
def destroy(yes: YesOpt = False, dry_run: DryRunOpt = False) -> None:
    """Stop everything and delete the local cluster's data (the audit log is kept)."""
    cluster = LocalCluster()
    plan = cluster.destroy_plan()
    if not plan:
        console.print(f"nothing to destroy under {cluster.home}")
        return
    console.print(Text("would remove:" if (dry_run or not yes) else "removing:", style="bold"))
    for path in plan:
        console.print(f"  {path}")
    if dry_run:
        return
    if not yes:
        if not os.isatty(0) or not typer.confirm("destroy the local cluster?", default=False):
            raise RefusedError("local destroy needs confirmation: re-run with --yes "
                               "(nothing was changed)")
    cluster.destroy()  # writes the local.destroy audit line
    console.print(f"destroyed the local cluster under {cluster.home}")


@app.command()
def url(role: RoleOpt = "app", database: DatabaseOpt = None, replica: ReplicaOpt = None) -> None:
    """Print a connection URL (no password in it: it names the 0600 passfile instead)."""
    profile = LocalCluster().profile()
    typer.echo(profile.endpoint(role, database, replica=replica).url())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context, role: RoleOpt = "app", database: DatabaseOpt = None,
         replica: ReplicaOpt = None) -> None:
    """Open psql on the local cluster (extra arguments go to psql). The password travels in
    the environment's passfile, never on the command line."""
    profile = LocalCluster().profile()
    env = child_env(profile, role, database, replica=replica)
    program = str(proc.pg_program("psql"))
    os.execve(program, [program, *ctx.args], env)
