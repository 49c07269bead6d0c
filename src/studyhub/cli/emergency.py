"""``studyhub emergency``: find runaway queries, cancel or terminate them, and "kill all" —
without ever killing replication, our own session or background workers. Signals run as the ops
role (pg_signal_backend); ``--block-new`` uses the app role (the database owner)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import (
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    YesOpt,
    confirm_destructive,
    console,
    err_console,
    ops_connection,
    print_json,
    profile_from,
    to_jsonable,
)
from studyhub.humanize import human_s, short
from studyhub.errors import RefusedError
from studyhub.ops import activity, emergency
from studyhub.ops.statements import parse_duration

app = typer.Typer(help="Emergency query control: long queries, cancel, terminate, kill-all.",
                  no_args_is_help=True)
APP_NAME = "studyhub emergency"

PidsArg = Annotated[list[int], typer.Argument(help="Backend PID(s).")]
OtherDbOpt = Annotated[bool, typer.Option(
    "--other-databases", help="Allow PIDs connected to other databases than the profile's.")]
ReplicationOpt = Annotated[bool, typer.Option(
    "--replication", help="Allow signalling replication connections (walsenders).")]


DatabaseOpt = Annotated[str | None, typer.Option(
    "--database", "-d", help="The database to act on (default: the profile's).")]


def _ops(profile: str | None, database: str | None = None, *, sees_activity: str):
    """The ops role's connection; stops with the GRANT when the role cannot see other roles'
    sessions (``sees_activity``: what would otherwise look all clear)."""
    return ops_connection(profile, database, sees_activity=sees_activity,
                          application_name=APP_NAME)


@app.command()
def queries(
    profile: ProfileOpt = None,
    older_than: Annotated[str, typer.Option("--older-than", help="e.g. 30s, 5m, 1h")] = "5m",
    state: Annotated[list[str] | None, typer.Option(
        "--state", help="active, 'idle in transaction', … (repeatable; default: all but idle)")] = None,
    all_databases: Annotated[bool, typer.Option("--all-databases")] = False,
    database: DatabaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Long-running queries (and transactions left idle), oldest first. Runs as the ops role."""
    limit = parse_duration(older_than).total_seconds()
    prof, conn = _ops(profile, database, sees_activity="the list of long-running queries")
    with conn:
        found = activity.long_queries(
            conn, limit, tuple(state) if state else activity.DEFAULT_LONG_STATES,
            None if all_databases else conn.info.dbname)
    if json_:
        print_json([{**activity_dict(s), "fingerprint": emergency.fingerprint(s)} for s in found])
        return
    if not found:
        console.print(f"no query older than {older_than} on {prof.name}")
        return
    table = Table(title=f"queries older than {older_than} · {prof.name}", title_justify="left")
    table.add_column("pid", no_wrap=True, min_width=7, justify="right")
    table.add_column("age", no_wrap=True, min_width=6, justify="right")
    for col in ("state", "role", "app", "database", "wait"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("blocked by", no_wrap=True, min_width=7)
    table.add_column("query", overflow="fold", min_width=20)
    for s in found:
        table.add_row(str(s.pid), human_s(s.age_s),
                      s.state.replace("idle in transaction", "idle in xact"), s.role or "",
                      s.application,
                      s.database or "", f"{s.wait_event_type or ''}:{s.wait_event or ''}".strip(":"),
                      ",".join(map(str, s.blocked_by)), short(s.query, 120))
    console.print(table)


def activity_dict(s: activity.Session) -> dict:
    d = to_jsonable(s)
    d["age_s"] = s.age_s
    return d


def _signal(action: str, pids: list[int], profile: str | None, database: str | None,
            other_databases: bool, replication: bool, yes: bool, dry_run: bool,
            json_: bool) -> None:
    prof, conn = _ops(profile, database,
                      sees_activity=f"the sessions to {action} (state, age, fingerprint)")
    with conn:
        emergency.ensure_can_signal(conn)
        targets = emergency.plan_signal(conn, pids, other_databases=other_databases,
                                        replication=replication)
        _show_targets(f"would {action}", targets)
        if dry_run:
            return
        confirm_destructive(prof, f"{action} {len(targets)} backend(s)", yes=yes)
        outcomes = emergency.signal(conn, targets, action, profile=prof.name)
    _show_outcomes(outcomes, json_)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _show_targets(title: str, targets: list[emergency.Target]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("pid", no_wrap=True, min_width=7, justify="right")
    for col in ("database", "role", "app", "type", "state", "age", "fingerprint"):
        table.add_column(col, overflow="fold")
    for t in targets:
        table.add_row(str(t.pid), t.database or "-", t.role or "-", t.application,
                      t.backend_type, t.state, human_s(t.age_s), t.fingerprint or "-")
    err_console.print(table)


def _show_outcomes(outcomes: list[emergency.Outcome], json_: bool) -> None:
    if json_:
        print_json(outcomes)
        return
    for o in outcomes:
        mark = ("ok", "green") if o.ok else ("FAILED", "red")
        console.print(Text.assemble(mark, f" {o.action} {o.pid}: {o.result}"))


@app.command()
def cancel(pids: PidsArg, profile: ProfileOpt = None, database: DatabaseOpt = None,
           other_databases: OtherDbOpt = False,
           replication: ReplicationOpt = False, yes: YesOpt = False, dry_run: DryRunOpt = False,
           json_: JsonOpt = False) -> None:
    """Cancel the running query of each PID (the session stays). Refuses our own session,
    walsenders and other databases' backends unless asked; reports per PID; audited."""
    _signal("cancel", pids, profile, database, other_databases, replication, yes, dry_run, json_)


@app.command()
def terminate(pids: PidsArg, profile: ProfileOpt = None, database: DatabaseOpt = None,
              other_databases: OtherDbOpt = False,
              replication: ReplicationOpt = False, yes: YesOpt = False,
              dry_run: DryRunOpt = False, json_: JsonOpt = False) -> None:
    """Terminate each PID's session (its transaction rolls back). Same safety rules as cancel."""
    _signal("terminate", pids, profile, database, other_databases, replication, yes, dry_run, json_)


@app.command("kill-all")
def kill_all(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    include_ops: Annotated[bool, typer.Option(
        "--include-ops", help="Also terminate other sessions of the ops role.")] = False,
    block_new: Annotated[bool, typer.Option(
        "--block-new", help="Keep new connections out (CONNECTION LIMIT 0, as the database "
                            "owner) until the maintenance window ends, then restore the limit.")] = False,
    hold: Annotated[str | None, typer.Option(
        "--hold", help="With --block-new: how long to keep connections out (e.g. 10m); "
                       "default: until you press Enter.")] = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Terminate every session of the database except our own, walsenders and replication-slot
    consumers, autovacuum and background workers, and (unless --include-ops) the ops role's.
    Shows the list first; each termination is audited with the query's fingerprint."""
    hold_s = parse_duration(hold).total_seconds() if hold else None
    if block_new and hold_s is None and not dry_run and not sys.stdin.isatty():
        raise RefusedError("--block-new without a terminal needs --hold DURATION (how long to "
                           "keep connections out); nothing was changed")
    prof, conn = _ops(profile, sees_activity="the kill-all plan (states, ages, fingerprints)")
    db = database or prof.database
    with conn:
        emergency.ensure_can_signal(conn)
        plan = emergency.plan_kill_all(conn, db, ops_role=prof.users["ops"],
                                       include_ops=include_ops)
        _show_plan(plan, block_new)
        if dry_run:
            if json_:
                print_json(plan)
            return
        prof.require_changes_allowed(f"kill all connections to {db}")
        confirm_destructive(prof, f"terminate {len(plan.targets)} session(s) on {db}"
                            + (" and block new connections" if block_new else ""), yes=yes)
        if not block_new:
            outcomes = emergency.kill_all(conn, plan, profile=prof.name)
            _show_outcomes(outcomes, json_)
            if not all(o.ok for o in outcomes):
                raise typer.Exit(1)
            return
        with emergency.new_connections_blocked(prof, db) as state:
            err_console.print(Text.assemble(
                (f"new connections to {db} blocked", "yellow"),
                f" ({state.statement}); undo if this run dies: studyhub emergency unblock "
                f"-d {db}"))
            # re-plan: sessions that connected before the block took effect are included
            plan = emergency.plan_kill_all(conn, db, ops_role=prof.users["ops"],
                                           include_ops=include_ops,
                                           own_pids={state.session_pid})
            outcomes = emergency.kill_all(conn, plan, profile=prof.name)
            _show_outcomes(outcomes, json_)
            if hold_s is not None:
                err_console.print(f"holding the maintenance window for {human_s(hold_s)}")
                time.sleep(hold_s)
            else:
                typer.prompt("maintenance window open; press Enter to re-allow connections",
                             default="", show_default=False, err=True)
        err_console.print(Text.assemble((f"new connections to {db} allowed again", "green"),
                                        " (limit restored)"))
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _show_plan(plan: emergency.KillAllPlan, block_new: bool) -> None:
    table = Table(title=f"kill-all on {plan.database}: {len(plan.targets)} to terminate, "
                        f"{len(plan.spared)} spared", title_justify="left")
    table.add_column("pid", no_wrap=True, min_width=7, justify="right")
    for col in ("action", "role", "app", "type", "state", "age", "why"):
        table.add_column(col, overflow="fold")
    for t in plan.targets:
        table.add_row(str(t.pid), Text("terminate", style="red"), t.role or "-", t.application,
                      t.backend_type, t.state, human_s(t.age_s), "")
    for s in plan.spared:
        t = s.target
        table.add_row(str(t.pid), Text("spare", style="green"), t.role or "-", t.application,
                      t.backend_type, t.state, human_s(t.age_s), s.reason)
    err_console.print(table)
    if block_new:
        err_console.print(f"new connections to {plan.database} will be blocked first "
                          "(ALTER DATABASE … CONNECTION LIMIT 0) and re-allowed afterwards")


@app.command()
def unblock(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Re-allow connections after a `kill-all --block-new` that did not finish: restores the
    connection limit recorded when blocking (or removes the limit). Runs as the app role."""
    prof = profile_from(profile)
    db = database or prof.database
    state = emergency.read_block_state(prof.name, db)
    limit = state.previous_limit if state else -1
    console.print(f"would restore CONNECTION LIMIT {limit} on {db}"
                  + (f" (recorded at {state.blocked_at})" if state else " (no record found)"))
    if dry_run:
        return
    confirm_destructive(prof, f"restore the connection limit of {db}", yes=yes)
    result = emergency.unblock_new_connections(prof, db)
    console.print(f"connections to {result.database} allowed again (limit "
                  f"{result.restored_limit}, via database {result.via_database})")
