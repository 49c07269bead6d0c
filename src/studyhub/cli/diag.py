"""``studyhub diag``: diagnostics. Read commands run as the ops role (pg_monitor: statistics and
catalogs, never app rows); ``explain``, ``advise`` and ``create-index`` need the app role (the
tables' owner) because they plan or change the app's own tables."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from studyhub.audit import write_audit
from studyhub.cli.common import (
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    YesOpt,
    DatabaseOpt,
    ServerWideDatabaseOpt,
    confirm_destructive,
    console,
    err_console,
    ops_connection,
    print_json,
    profile_from,
)
from studyhub.humanize import human_bytes, human_s, short
from studyhub.connect import connect
from studyhub.ops import activity, health, indexes, space, statements

app = typer.Typer(help="Diagnostics: health report, slow queries, indexes, locks, connections, "
                       "replication, sizes.", no_args_is_help=True)

STATUS_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red"}
APP_NAME = "studyhub diag"





# ----------------------------------------------------------------------------- doctor
@app.command()
def doctor(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    json_: JsonOpt = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a threshold, e.g. --set long_queries.warn_s=30 (repeatable; "
                      r"defaults and \[doctor] in studyhub.toml: docs/diag.md).")] = None,
    check: Annotated[list[str] | None, typer.Option(
        "--check", help="Run only this check (repeatable).")] = None,
    no_fail: Annotated[bool, typer.Option(
        "--no-fail", help="Exit 0 whatever the findings (for demos).")] = False,
) -> None:
    """Health report: every check ok / warn / critical with value, threshold and fix.
    Exit code: 0 ok, 1 warn, 2 critical (so cron and CI can act on it). Runs as the ops role."""
    limits = health.thresholds(health.parse_settings(set_ or []))
    prof, conn = ops_connection(profile, database, application_name=APP_NAME)
    with conn:
        report = health.run_doctor(conn, prof, limits=limits, only=check)
    if json_:
        print_json(report)
    else:
        table = Table(title=Text.assemble(f"doctor · {prof.name}/{report.database}: ",
                                          (report.status, STATUS_STYLE[report.status])),
                      title_justify="left")
        table.add_column("status", no_wrap=True)
        table.add_column("check", ratio=2)
        table.add_column("value", ratio=2)
        table.add_column("threshold", ratio=2)
        for c in report.checks:
            table.add_row(Text(c.status, style=STATUS_STYLE[c.status]), c.title, str(c.value),
                          c.threshold)
        console.print(table)
        for c in report.checks:
            if c.status == "ok":
                continue
            style = STATUS_STYLE[c.status]
            console.print(Text.assemble((f"{c.status:8} ", style), (c.name, "bold"),
                                        f": {c.detail}" if c.detail else ""))
            if c.fix:
                console.print(Text(f"         fix: {c.fix}"), soft_wrap=False)
    if not no_fail and report.exit_code:
        raise typer.Exit(report.exit_code)


# ----------------------------------------------------------------------------- slow queries
@app.command("slow-queries")
def slow_queries(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    sort: Annotated[str, typer.Option("--sort", help="total | mean | calls | io")] = "total",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 20,
    min_calls: Annotated[int, typer.Option("--min-calls", min=0)] = 1,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only work done in this window (e.g. 1h, 30m), from the snapshots "
                        "stored in ops.statement_snapshots; survives stats resets.")] = None,
    reset: Annotated[bool, typer.Option(
        "--reset", help="Save a snapshot, then reset pg_stat_statements for this database "
                        "(asks first).")] = False,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Costliest statements from pg_stat_statements: share of total time, calls, mean, rows,
    cache hits, I/O time. Each run stores a snapshot (ops.statement_snapshots) so --since can
    show trends across resets. Runs as the ops role."""
    window = statements.parse_duration(since) if since else None
    prof, conn = ops_connection(profile, database, sees_activity="slow-queries",
                                application_name=APP_NAME)
    with conn:
        if reset:
            if dry_run:
                console.print(f"would save a snapshot and reset pg_stat_statements of "
                              f"{conn.info.dbname} on {prof.name}")
                return
            confirm_destructive(prof, f"reset pg_stat_statements of {conn.info.dbname}", yes=yes)
            result = statements.reset_stats(conn)
            write_audit("diag.slow_queries.reset", prof.name, database=result.database,
                        statements=result.statements_before, snapshot_saved=result.snapshot_saved)
            if json_:
                print_json(result)
            else:
                console.print(f"reset pg_stat_statements of {result.database} "
                              f"({result.statements_before} statements; snapshot "
                              f"{'saved' if result.snapshot_saved else 'NOT saved'})")
            return
        report = statements.slow_queries(conn, sort=sort, limit=limit, min_calls=min_calls,
                                         since=window)
    if json_:
        print_json(report)
        return
    console.print(Text(f"slow queries · {prof.name}/{report.database} · {report.window} · "
                       f"sorted by {report.sort} · total {human_s(report.total_exec_ms / 1000)}",
                       style="bold"))
    if not report.statements:
        console.print("no statements recorded in that window")
    for i, s in enumerate(report.statements, 1):
        hit = "-" if s["cache_hit_pct"] is None else f"{s['cache_hit_pct']:.1f}%"
        console.print(Text.assemble(
            (f"{i:>3}. ", "bold"), (f"{s['share_pct']:5.1f}% ", "yellow"),
            f"total {human_s(s['total_exec_ms'] / 1000)} · {s['calls']:,} calls · "
            f"mean {s['mean_ms']:.2f}ms · {s['rows']:,} rows · hit {hit} · "
            f"I/O {human_s(s['io_ms'] / 1000)} · {s['role']} · queryid {s['queryid']}"))
        console.print(Text("       " + short(s["query"], 300), style="dim"))
    for note in report.notes:
        err_console.print(Text.assemble(("note:", "yellow"), f" {note}"))


# ----------------------------------------------------------------------------- indexes
@app.command("indexes")
def indexes_cmd(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    json_: JsonOpt = False,
    unused_min_bytes: Annotated[int, typer.Option(
        "--unused-min-bytes", help="Hide unused indexes smaller than this.")] = 0,
    advise: Annotated[bool, typer.Option(
        "--advise", help="Also run the advisor (as the app role) so tables missing an index "
                         "get the exact CREATE INDEX it recommends.")] = False,
) -> None:
    """Missing (heavy sequential scans), unused, duplicate, invalid and bloated indexes and
    foreign keys without one, each with the DDL that fixes it (for missing ones: with
    --advise, else a pointer to `diag advise`). Runs as the ops role."""
    prof, conn = ops_connection(profile, database, application_name=APP_NAME)
    with conn:
        report = indexes.index_report(conn, unused_min_bytes=unused_min_bytes)
    if advise and report.missing:
        from studyhub.ops import advisor

        with connect(prof, "app", database=database, application_name=APP_NAME) as app_conn:
            advisor.attach_advice(report, advisor.advise(app_conn))
    if json_:
        print_json(report)
        return
    table = Table(title=f"indexes · {prof.name}/{report.database}", title_justify="left")
    for col in ("kind", "table", "index", "size", "why", "fix"):
        table.add_column(col, overflow="fold")
    rows = [*report.invalid, *report.duplicate, *report.missing, *report.bloat, *report.unused]
    for f in rows:
        fix = f.fix_sql or f.details.get("hint", "")
        table.add_row(f.kind, f.table, f.index or "-", human_bytes(f.size_bytes), f.reason, fix)
    for fk in report.foreign_keys_without_index:
        table.add_row("fk without index", fk.table, "-", human_bytes(fk.table_bytes),
                      f"{fk.constraint} ({', '.join(fk.columns)}) → {fk.referenced_table}",
                      fk.fix_sql)
    if not rows and not report.foreign_keys_without_index:
        console.print(f"indexes · {prof.name}/{report.database}: nothing to fix")
        return
    console.print(table)


# ----------------------------------------------------------------------------- create-index
@app.command("create-index")
def create_index(
    table: Annotated[str, typer.Argument(help="Table, optionally schema.table.")],
    columns: Annotated[list[str], typer.Argument(help="Column(s), in index order.")],
    name: Annotated[str | None, typer.Option("--name", help="Index name (default ix_<table>_<cols>).")] = None,
    lock_timeout: Annotated[str, typer.Option("--lock-timeout")] = "5s",
    retries: Annotated[int, typer.Option("--retries", min=0)] = 3,
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """CREATE INDEX CONCURRENTLY with lock_timeout and retries, a progress bar, then checks
    indisvalid/indisready; a failed build's invalid leftover is dropped. Runs as the app role
    (the table owner), on the server's own port, never through the pooler."""
    prof = profile_from(profile)
    result = build_index(prof, table, columns, name=name, lock_timeout=lock_timeout,
                         retries=retries, yes=yes, dry_run=dry_run, quiet=json_,
                         database=database)
    if result is not None and json_:
        print_json(result)


def build_index(prof, table, columns, *, name=None, lock_timeout="5s", retries=3, yes=False,
                dry_run=False, quiet=False, database=None):
    schema, tname = indexes.split_table(table)
    iname = name or indexes.index_name(tname, list(columns))
    statement = indexes.create_index_sql(schema, tname, list(columns), iname).as_string(None)
    if dry_run:
        console.print(f"would run on {prof.name}: {statement}")
        return None
    confirm_destructive(prof, f"build index {iname} on {table}", yes=yes)
    pooler_ports = {prof.pooler_port} if prof.pooler_port else set()
    with connect(prof, "app", database=database, autocommit=True,
                 application_name="studyhub create-index") as conn:
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                      TaskProgressColumn(),
                      TimeElapsedColumn(), console=err_console, transient=True,
                      disable=quiet) as bar:
            task = bar.add_task(f"CREATE INDEX CONCURRENTLY {iname}", total=None)

            def on_progress(p: indexes.BuildProgress) -> None:
                frac = p.fraction
                bar.update(task, description=f"{iname}: {p.phase}",
                           total=100 if frac is not None else None,
                           completed=(frac or 0) * 100)

            result = indexes.create_index(
                conn, table, list(columns), name=iname, lock_timeout=lock_timeout,
                retries=retries, pooler_ports=pooler_ports,
                monitor=lambda: connect(prof, "ops", database=database, autocommit=True,
                                        application_name="studyhub create-index progress"),
                progress=on_progress)
    write_audit("diag.create_index", prof.name, table=f"{result.schema}.{result.table}",
                index=result.index, columns=result.columns, attempts=result.attempts,
                already_existed=result.already_existed, duration_s=round(result.duration_s, 2))
    if not quiet:
        if result.already_existed:
            console.print(f"index {result.index} already exists and is valid; nothing to do")
        else:
            console.print(f"built {result.index} on {result.table} in "
                          f"{human_s(result.duration_s)} ({result.attempts} attempt(s)): "
                          f"valid={result.is_valid} ready={result.is_ready}")
    return result


# ----------------------------------------------------------------------------- live activity
@app.command()
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


@app.command()
def locks(profile: ProfileOpt = None, database: ServerWideDatabaseOpt = None,
          json_: JsonOpt = False) -> None:
    """The blocking tree of the whole server: who blocks whom, lock modes, objects and waiting
    time, root blockers first (objects are named in the database connected to). Runs as the
    ops role (needs pg_monitor to see other roles' queries)."""
    prof, conn = ops_connection(profile, database, sees_activity="the blocking tree",
                                application_name=APP_NAME)
    with conn:
        roots = activity.blocking_tree(conn)
    if json_:
        print_json({"profile": prof.name, "roots": roots})
        return
    if not roots:
        console.print(f"locks · {prof.name}: no session is waiting for a lock")
        return
    tree = Tree(f"locks · {prof.name}: {sum(1 + r.count() for r in roots)} sessions involved")

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
    console.print(tree)


@app.command()
def replication(profile: ProfileOpt = None, database: ServerWideDatabaseOpt = None,
                json_: JsonOpt = False) -> None:
    """Lag in bytes and seconds for each replica and slot, from the primary and, when the
    profile has a replica and it is reachable, from the replica itself. Runs as the ops role
    (needs pg_monitor: without it pg_stat_replication hides the positions)."""
    prof, conn = ops_connection(profile, database, sees_activity="replication lag",
                                application_name=APP_NAME)
    with conn:
        report = activity.replication_report(prof, conn)
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
@app.command()
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


# ----------------------------------------------------------------------------- explain, advise
@app.command()
def explain(
    statement: Annotated[str, typer.Argument(help="One SQL statement (quote it).")],
    analyze: Annotated[bool, typer.Option(
        "--analyze", help="Run it for real (EXPLAIN ANALYZE, BUFFERS), then roll back. Anything "
                          "but a plain SELECT (DML, FOR UPDATE, volatile functions such as "
                          "nextval) needs --yes or confirmation and is refused on production "
                          "unless named: row locks are held while it runs and sequences, "
                          "signals and remote writes are not rolled back.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="statement_timeout")] = "30s",
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """EXPLAIN one statement inside a transaction that is always rolled back, with a
    statement_timeout and lock_timeout. The text is read by PostgreSQL's own parser: exactly
    one SELECT, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE, EXECUTE, DECLARE or CREATE
    TABLE/MATERIALIZED VIEW AS is accepted; anything else (several statements, COMMIT, DROP,
    VACUUM …) is refused before anything runs. $n placeholders get a generic plan. Runs as
    the app role (planning needs SELECT on the tables)."""
    from studyhub.ops import explain as ops_explain

    prof = profile_from(profile)
    # Refused here — before connecting, confirming or auditing — unless it is exactly one
    # statement EXPLAIN takes, as PostgreSQL's own parser reads it.
    stmt = ops_explain.explainable(statement, analyze=analyze)
    with connect(prof, "app", database=database, application_name=APP_NAME) as conn:
        effects = ops_explain.analyze_effects(conn, stmt.text) if analyze else None
        if effects is not None and not effects.plain_select:
            for reason in effects.reasons:
                err_console.print(Text.assemble(("--analyze runs it for real:", "yellow"),
                                                f" {reason}"))
            confirm_destructive(prof, f"run this {effects.kind} for real under EXPLAIN ANALYZE "
                                      "(rolled back afterwards)", yes=yes)
            write_audit("diag.explain.analyze", prof.name, database=conn.info.dbname,
                        statement_kind=effects.kind, effects=len(effects.reasons))
        result = ops_explain.explain_statement(conn, stmt.text, analyze=analyze, timeout=timeout,
                                               as_json=json_, allow_effects=True)
    if json_:
        print_json(result)
        return
    flags = ["ANALYZE (rolled back)" if analyze else "estimate only"]
    if result.generic:
        flags.append("generic plan ($n = NULL)")
    console.print(Text(f"explain · {prof.name} · {', '.join(flags)}", style="bold"))
    for line in result.plan:
        console.print(Text(line))


@app.command()
def advise(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Statements to analyse.", min=1)] = 50,
    min_calls: Annotated[int, typer.Option(
        "--min-calls", min=1,
        help="Only statements called at least this often: a one-off (a migration's backfill, "
             "a report run once) is never indexed for (Dexter's default is 0).")] = 10,
    min_cost: Annotated[float, typer.Option("--min-cost", help="Ignore cheaper statements.")] = 100,
    min_saving: Annotated[float, typer.Option(
        "--min-saving", help="Recommend only indexes that cut a statement's cost by this %.")] = 50,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Build the recommended indexes (via create-index: CONCURRENTLY).")] = False,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Cost-based index advice (hypopg): plans the costliest pg_stat_statements entries called
    at least --min-calls times with hypothetical single- and two-column indexes and recommends
    only those that cut cost substantially. --apply builds them (--dry-run: show the
    statements it would run). Runs as the app role (planning needs SELECT on the tables; it
    sees the statements the app role ran)."""
    from studyhub.ops import advisor

    prof = profile_from(profile)
    with connect(prof, "app", database=database, application_name=APP_NAME) as conn:
        report = advisor.advise(conn, limit=limit, min_calls=min_calls, min_cost=min_cost,
                                min_saving_pct=min_saving)
    built = []
    if json_ and not apply:
        print_json(report)
        return
    if not json_:
        _render_advice(prof.name, report)
    if apply and dry_run:
        planned = [rec.create_sql for rec in report.recommendations]
        if json_:
            print_json({"advice": report, "built": [], "would_run": planned})
        else:
            for stmt in planned:
                console.print(f"would run on {prof.name}: {stmt}", soft_wrap=True)
            if not planned:
                console.print("nothing to build")
        return
    if apply and report.recommendations:
        for rec in report.recommendations:
            built.append(build_index(prof, f"{rec.schema}.{rec.table}", rec.columns,
                                     name=rec.index_name, yes=yes, quiet=json_,
                                     database=database))
    if json_:
        print_json({"advice": report, "built": built})


def _render_advice(profile: str, report) -> None:
    console.print(Text(f"advise · {profile}/{report.database}: "
                       f"{sum(1 for s in report.statements if s.cost_before is not None)} "
                       f"statement(s) planned, {report.candidates_tried} hypothetical index(es) "
                       f"tried (min calls {report.min_calls}, min cost {report.min_cost:g}, "
                       f"min saving {report.min_saving_pct:g}%)", style="bold"))
    one_offs = sum(1 for s in report.statements if s.cost_before is None and s.calls < report.min_calls)
    if one_offs:
        console.print(f"{one_offs} statement(s) called fewer than {report.min_calls} times not "
                      "considered (one-offs: migrations, backfills, ad-hoc queries; --min-calls)")
    if not report.recommendations:
        console.print("no index would cut a costly statement's cost enough")
    for rec in report.recommendations:
        console.print(Text.assemble(("recommend ", "green"), (rec.create_sql, "bold")))
        console.print(f"   cost {rec.cost_before:,.0f} → {rec.cost_after:,.0f} "
                      f"({rec.saving_pct:.0f}% less) for {len(rec.queryids)} statement(s):")
        for st in report.statements:
            if st.queryid in rec.queryids:
                console.print(Text(f"     {st.cost_before:,.0f} → {st.cost_after:,.0f}  "
                                   f"{st.calls:,} calls  {short(st.query, 100)}", style="dim"))
    for note in report.notes:
        err_console.print(Text.assemble(("note:", "yellow"), f" {note}"))
