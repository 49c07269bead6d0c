"""``diag indexes``, ``diag create-index`` and ``diag advise``: index findings, building one
concurrently (``indexes.build_index``: the one path every renderer takes), and cost-based
advice (hypopg) that can build what it recommends."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
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
from studyhub.humanize import human_bytes, human_s, short
from studyhub.ops import advisor, indexes

APP_NAME = "studyhub diag"


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
def create_index(
    table: Annotated[str, typer.Argument(
        help="Table, optionally schema.table, as SQL reads names: unquoted parts fold to lower "
             "case; quote a name to keep its case or a dot in it ('\"My.Notes\"').")],
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


def build_index(prof, table: str, columns: list[str], *, name: str | None = None,
                lock_timeout: str = "5s", retries: int = 3, yes: bool = False,
                dry_run: bool = False, quiet: bool = False, database: str | None = None,
                shown: str | None = None) -> indexes.IndexBuildResult | None:
    """``indexes.build_index`` with a confirmation (naming the index the plan resolved) and a
    progress bar; ``--dry-run`` shows the statement (the name read by the server, nothing
    checked or built). ``shown``: the table as the confirmation names it (default: as typed)."""
    if dry_run:
        with connect(prof, "app", database=database, application_name=APP_NAME) as conn:
            plan = indexes.plan_index(conn, table, list(columns), name, check=False)
        console.print(f"would run on {prof.name}: {plan.statement}")
        return None
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                   TaskProgressColumn(), TimeElapsedColumn(), console=err_console,
                   transient=True, disable=quiet)
    task: list = []  # (task id, index name) once confirmed

    def confirm(plan: indexes.IndexPlan) -> None:
        confirm_destructive(prof, f"build index {plan.index} on {shown or table}", yes=yes)
        bar.start()
        task.append((bar.add_task(f"CREATE INDEX CONCURRENTLY {plan.index}", total=None),
                     plan.index))

    def on_progress(p: indexes.BuildProgress) -> None:
        frac = p.fraction
        bar.update(task[0][0], description=f"{task[0][1]}: {p.phase}",
                   total=100 if frac is not None else None, completed=(frac or 0) * 100)

    try:
        result = indexes.build_index(prof, table, list(columns), name=name, database=database,
                                     lock_timeout=lock_timeout, retries=retries,
                                     before_build=confirm, progress=on_progress)
    finally:
        bar.stop()
    if not quiet:
        if result.already_existed:
            console.print(f"index {result.index} already exists and is valid; nothing to do")
        else:
            console.print(f"built {result.index} on {result.table} in "
                          f"{human_s(result.duration_s)} ({result.attempts} attempt(s)): "
                          f"valid={result.is_valid} ready={result.is_ready}")
    return result


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
            built.append(build_index(prof, indexes.qualified_name(rec.schema, rec.table),
                                     rec.columns, name=rec.index_name, yes=yes, quiet=json_,
                                     database=database, shown=f"{rec.schema}.{rec.table}"))
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
