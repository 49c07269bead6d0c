"""``diag connections``, ``locks``, ``replication`` and ``sizes``: what the server is doing
and how big it is."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from studyhub.cli.common import (
    DatabaseOpt,
    JsonOpt,
    ProfileOpt,
    ServerWideDatabaseOpt,
    console,
    err_console,
    ops_connection,
    print_json,
    profile_from,
)
from studyhub.connect import connect
from studyhub.humanize import human_bytes, human_s, short
from studyhub.ops import activity, history, space
from studyhub.ops import replication as ops_replication

APP_NAME = "studyhub diag"
AtOpt = Annotated[str | None, typer.Option(
    "--at", help="Replay a past moment from the agent's history: '2026-12-02 09:41' (local "
                 "time) or ISO 8601 with an offset.")]


def connections(
    profile: ProfileOpt = None,
    by: Annotated[str, typer.Option("--by", help="state | user | app | client | database")] = "state",
    database: ServerWideDatabaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Client connections of the whole server grouped by state, user, app, client or database,
    with SSL use, and PgBouncer's pools (SHOW POOLS) when the profile has a pooler. Runs as the
    ops role (needs pg_monitor to see other roles' states)."""
    prof, conn = ops_connection(profile, database, sees_activity="connections by state",
                                application_name=APP_NAME)
    with conn:
        report = activity.connection_report(conn, by, prof)
    if json_:
        print_json(report)
        return
    table = Table(title=f"connections · {prof.name}: {report.total}/{report.max_connections} "
                        f"({report.superuser_reserved} reserved for superusers) by {by}",
                  title_justify="left")
    for col in (by, "total", "active", "idle", "idle in xact", "other", "ssl"):
        table.add_column(col, justify="left" if col == by else "right")
    for g in report.groups:
        table.add_row(g.key, str(g.total), str(g.active), str(g.idle),
                      str(g.idle_in_transaction), str(g.other), str(g.ssl))
    console.print(table)
    if report.pools is not None:
        pools = Table(title="pooler (SHOW POOLS)", title_justify="left")
        for col in ("database", "user", "mode", "clients active", "clients waiting",
                    "servers active", "servers idle", "max wait"):
            pools.add_column(col)
        for p in report.pools:
            pools.add_row(p.database, p.user, p.mode, str(p.clients_active),
                          str(p.clients_waiting), str(p.servers_active), str(p.servers_idle),
                          human_s(p.max_wait_s))
        console.print(pools)
    if report.pooler_note:
        err_console.print(Text.assemble(("note:", "yellow"), f" {report.pooler_note}"))


def lock_tree(title: str, roots: list[activity.LockNode]) -> Tree:
    """The blocking tree as ``diag locks`` prints it (live, or replayed from the history)."""
    tree = Tree(title)

    def label(n: activity.LockNode) -> Text:
        head = Text.assemble((str(n.pid), "bold"),
                             f" {n.role or '?'}@{n.database or '?'} {n.application} [{n.state}]")
        if n.waiting:
            head.append(f" waits {human_s(n.wait_s)} for {n.waiting_mode} on "
                        f"{n.locked_object or '?'}", style="yellow")
        if n.held_mode:
            head.append(f" holds {n.held_mode} on {n.held_object or '?'}")
        if not n.waiting:
            head.append(f" root blocker, transaction {human_s(n.xact_age_s)} old, blocks "
                        f"{n.count()}", style="red")
        return head.append("\n").append(short(n.query, 100), style="dim")

    def add(branch, n):
        sub = branch.add(label(n))
        for c in n.children:
            add(sub, c)

    for r in roots:
        add(tree, r)
    return tree


def replay_line(m: history.Moment) -> str:
    """Which snapshot a replay shows, and how far it is from the asked time."""
    return (f"snapshot of {m.taken_at.astimezone():%Y-%m-%d %H:%M:%S %z}, "
            f"{human_s(m.gap_s)} before the asked {m.asked_at.astimezone():%H:%M:%S}")


def locks(profile: ProfileOpt = None, database: ServerWideDatabaseOpt = None,
          json_: JsonOpt = False, at: AtOpt = None) -> None:
    """The blocking tree of the whole server: who blocks whom, lock modes, objects and waiting
    time, root blockers first (objects are named in the database connected to). --at replays
    the nearest sampled moment at or before that time from the agent's history. Runs as the
    ops role (needs pg_monitor to see other roles' queries)."""
    when = history.parse_when(at, what="--at time") if at else None
    prof, conn = ops_connection(profile, database, sees_activity="the blocking tree",
                                application_name=APP_NAME)
    with conn:
        if when is not None:
            m = history.moment(conn, when)
            roots, replay = m.tree, m
        else:
            roots, replay = activity.blocking_tree(conn), None
    if json_:
        out: dict = {"profile": prof.name, "roots": roots}
        if replay is not None:
            out.update(taken_at=replay.taken_at, asked_at=replay.asked_at, gap_s=replay.gap_s)
        print_json(out)
        return
    where = f"locks · {prof.name}" + (f" · {replay_line(replay)}" if replay else "")
    if not roots:
        console.print(f"{where}: no session was waiting for a lock" if replay else
                      f"{where}: no session is waiting for a lock")
        return
    console.print(lock_tree(f"{where}: {sum(1 + r.count() for r in roots)} sessions involved",
                            roots))


def replication(profile: ProfileOpt = None, database: ServerWideDatabaseOpt = None,
                json_: JsonOpt = False) -> None:
    """Lag in bytes and seconds for each replica and slot, from the primary and, when the
    profile has a replica and it is reachable, from the replica itself. Runs as the ops role
    (needs pg_monitor: without it pg_stat_replication hides the positions)."""
    prof, conn = ops_connection(profile, database, sees_activity="replication lag",
                                application_name=APP_NAME)
    with conn:
        report = ops_replication.replication_report(prof, conn)
    if json_:
        print_json(report)
        return
    table = Table(title=f"replication · {prof.name} (seen from the primary)", title_justify="left")
    for col in ("replica", "state", "sent lag", "flushed lag", "replayed lag", "replay lag",
                "last reply"):
        table.add_column(col)
    for r in report.replicas:
        table.add_row(r.name, r.state, human_bytes(r.send_lag_bytes),
                      human_bytes(r.flush_lag_bytes), human_bytes(r.replay_lag_bytes),
                      human_s(r.replay_lag_s), human_s(r.last_reply_age_s))
    if report.replicas:
        console.print(table)
    elif not report.is_replica:
        console.print(f"replication · {prof.name}: no replica is streaming from the primary")
    if report.slots:
        slots = Table(title="replication slots", title_justify="left")
        for col in ("slot", "type", "active", "pid", "wal status", "retained WAL"):
            slots.add_column(col)
        for s in report.slots:
            slots.add_row(s.slot_name, s.slot_type,
                          Text("yes", style="green") if s.active else Text("NO", style="red"),
                          str(s.active_pid or "-"), s.wal_status or "-",
                          human_bytes(s.retained_bytes))
        console.print(slots)
    rs = report.replica_self
    if rs:
        behind = (rs.receive_replay_gap_bytes or 0) > 0
        console.print(
            f"replica {rs.endpoint} (its own view): receiver {rs.receiver_status or 'none'}, "
            f"replay {rs.replay_pause_state}, received-but-not-replayed "
            f"{human_bytes(rs.receive_replay_gap_bytes)}"
            + (f", last replayed transaction {human_s(rs.last_replay_age_s)} ago" if behind else ""))
    if report.replica_note:
        err_console.print(Text.assemble(("note:", "yellow"), f" {report.replica_note}"))


# ----------------------------------------------------------------------------- sizes
def sizes(
    profile: ProfileOpt = None,
    exact: Annotated[bool, typer.Option("--exact", help="Exact row counts (count(*)).")] = False,
    database: DatabaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Database, table, index and TOAST sizes with row counts (estimates as the ops role;
    --exact counts rows as the app role)."""
    prof = profile_from(profile)
    # Exact counts need SELECT on the tables (the app role); estimates need only pg_monitor.
    with connect(prof, "app" if exact else "ops", database=database,
                 application_name=APP_NAME) as conn:
        result = space.table_sizes(conn, exact_counts=exact)
    if json_:
        print_json(result)
        return
    table = Table(title=f"{prof.name}/{result.database}: {human_bytes(result.database_bytes)}",
                  title_justify="left")
    for col in ("table", "rows", "total", "heap", "indexes", "toast"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for t in result.tables:
        name = t.table if t.schema == "public" else f"{t.schema}.{t.table}"
        rows = t.rows if t.rows is not None else f"~{t.row_estimate}"
        table.add_row(name, f"{rows:,}" if isinstance(rows, int) else rows,
                      human_bytes(t.total_bytes), human_bytes(t.heap_bytes),
                      human_bytes(t.index_bytes), human_bytes(t.toast_bytes))
    console.print(table)
