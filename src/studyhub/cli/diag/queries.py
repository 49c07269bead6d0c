"""``diag slow-queries`` and ``diag explain``: the costliest statements (with history across
resets) and the plan of one statement."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from studyhub.cli.common import (
    DatabaseOpt,
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
)
from studyhub.connect import connect
from studyhub.humanize import human_s, short
from studyhub.ops import explain as ops_explain
from studyhub.ops import statements

APP_NAME = "studyhub diag"


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
            result = statements.reset_stats(conn, prof)
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
        # confirmed (or a plain SELECT): the run itself is audited by explain_statement
        result = ops_explain.explain_statement(conn, stmt.text, analyze=analyze, timeout=timeout,
                                               as_json=json_, allow_effects=True, profile=prof)
    if json_:
        print_json(result)
        return
    flags = ["ANALYZE (rolled back)" if analyze else "estimate only"]
    if result.generic:
        flags.append("generic plan ($n = NULL)")
    console.print(Text(f"explain · {prof.name} · {', '.join(flags)}", style="bold"))
    for line in result.plan:
        console.print(Text(line))
