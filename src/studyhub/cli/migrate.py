"""``studyhub migrate``: Alembic with a lock_timeout, never through the pooler."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
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
    print_json,
    profile_from,
    to_jsonable,
)
from studyhub.cli.migrate_rehearse import rehearse as rehearse_command
from studyhub.errors import StudyhubError
from studyhub.humanize import human_bytes
from studyhub.ops import migrate

app = typer.Typer(help="Apply, undo and inspect schema migrations (Alembic).", no_args_is_help=True)

LockTimeoutOpt = Annotated[
    str, typer.Option("--lock-timeout", help="Give up waiting for a lock after this long.")
]
DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", help="Override the database.")]
VersionsDirOpt = Annotated[
    list[Path] | None,
    typer.Option("--versions-dir", help="Also read migration files from DIR, on top of the "
                 "chain (try a draft before adding it).", exists=True, file_okay=False),
]


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    return human_bytes(n)


def _table_note(rows: int | None, size: int | None) -> str:
    if rows is None and size is None:
        return ""
    return f" (~{rows:,} rows, {_human(size)})"


def _show(result: migrate.MigrationResult, verb: str) -> None:
    before = ", ".join(result.from_revisions) or "base"
    after = ", ".join(result.to_revisions) or "base"
    if before == after:
        console.print(f"{result.profile}/{result.database}: already at {after}")
    else:
        console.print(f"{result.profile}/{result.database}: {verb} {before} → {after}")


def _describe_blocker(b) -> str:
    age = f", transaction open {b.xact_age_s:.1f} s" if b.xact_age_s is not None else ""
    held = f", holds {b.held_modes} on {b.waiting_for}" if b.held_modes else ""
    query = f"\n      query: {b.query}" if b.query else ""
    return (f"pid {b.pid} ({b.user_name or '?'}, {b.application_name or 'no application_name'}, "
            f"{b.state or '?'}{age}{held}){query}")


def _attempt_printer(json_: bool):
    def show(attempt: migrate.Attempt) -> None:
        if json_ or attempt.outcome == "ok":
            return
        what = "lock timeout" if attempt.outcome == "lock_timeout" else "failed"
        console.print(Text.assemble(
            (f"attempt {attempt.number}: {what} after {attempt.duration_s:.1f} s", "yellow"),
            f": {attempt.error}" if attempt.outcome != "lock_timeout" else ""))
        for b in attempt.blockers:
            console.print(f"    blocked by {_describe_blocker(b)}")
        if attempt.outcome == "lock_timeout" and not attempt.blockers:
            console.print("    (the blocking session ended before it could be seen)")
        for index in attempt.dropped_invalid_indexes:
            console.print(f"    dropped invalid index {index} left by the failed attempt")
        if attempt.retry_in_s is not None:
            console.print(f"    retrying in {attempt.retry_in_s:.1f} s")

    return show


@app.command()
def up(
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    lock_timeout: LockTimeoutOpt = migrate.DEFAULT_LOCK_TIMEOUT,
    retries: Annotated[int, typer.Option(
        "--retries", help="Try again this many times after a lock timeout.")] = 5,
    retry_wait: Annotated[float, typer.Option(
        "--retry-wait", help="Seconds before the first retry; doubles each time (max 30 s).")
    ] = 1.0,
    versions_dir: VersionsDirOpt = None,
    unsafe: Annotated[str | None, typer.Option(
        "--unsafe", metavar="REASON", help="Apply even though lint finds unacknowledged errors "
        "in the pending migrations, once; the reason (at least 10 characters) and the findings "
        "go to the audit log. Refused on production unless named with --profile.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Upgrade the database to head (or --to REV). First lints exactly the pending migrations
    and refuses unacknowledged errors before connecting for writing (each named with its
    file:line and the LINT_ACK that would allow it; --unsafe "reason" overrides once). Each
    statement waits at most --lock-timeout for its lock; on a lock timeout the sessions that
    blocked it are shown and the migration is retried with backoff. Invalid indexes a failed
    attempt left are dropped. Refused on a read-only profile, and on production unless named
    with --profile."""
    prof = profile_from(profile)
    result = migrate.upgrade(prof, to, database=database, lock_timeout=lock_timeout,
                             retries=retries, backoff_s=retry_wait,
                             on_attempt=_attempt_printer(json_), unsafe_reason=unsafe,
                             extra_versions=versions_dir or ())
    if json_:
        print_json(result)
        return
    if result.gate is not None and result.gate.blocking:
        console.print(Text(f"applied despite {len(result.gate.blocking)} unacknowledged lint "
                           f"error(s) (--unsafe: {result.gate.unsafe_reason}; audited):",
                           style="yellow"))
        for f in result.gate.blocking:
            console.print(f"  {migrate.gate.describe(f)}")
    for note in result.notes:
        console.print(f"  {note}")
    _show(result, "upgraded")


@app.command()
def down(
    to: Annotated[str, typer.Option("--to", help="Target: a revision, -1 (one step; the default) or base.")] = "-1",
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    lock_timeout: LockTimeoutOpt = migrate.DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Downgrade (undo migrations). First shows each statement the downgrades run (rendered
    offline), the lock it takes on which table, what that blocks and for how long, and lint's
    findings on it; then needs --yes or confirmation. Production must be named with
    --profile production."""
    prof = profile_from(profile)
    what = migrate.describe_downgrade(to)
    prof.require_changes_allowed(what)  # before connecting: production must be named explicitly
    planned = migrate.plan.plan_downgrade(prof, to, database=database)
    if not planned.migrations:
        console.print(f"nothing to undo: the database is at {', '.join(planned.current) or 'base'}")
        return
    undo = migrate.downgrade_plan(planned.current, to)
    console.print(Text.assemble(
        ("would undo", "bold"),
        f" on {prof.name}/{planned.database} ({', '.join(planned.current)} → "
        f"{planned.target}): " + ", ".join(
            f"{r.revision} ({r.message.splitlines()[0] if r.message else ''})" for r in undo)))
    _render_planned(planned)
    if dry_run:
        return
    confirm_destructive(prof, what, yes=yes)
    result = migrate.downgrade(prof, to, database=database, lock_timeout=lock_timeout)
    _show(result, "downgraded")


@app.command()
def current(profile: ProfileOpt = None, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Show the revision the database is at."""
    prof = profile_from(profile)
    cur = migrate.current(prof, database)
    heads = migrate.heads()
    if json_:
        print_json({"profile": prof.name, "current": cur, "head": heads,
                    "at_head": sorted(cur) == sorted(heads)})
        return
    state = "(head)" if sorted(cur) == sorted(heads) else f"(head is {', '.join(heads)})"
    console.print(f"{prof.name}: {', '.join(cur) or 'base'} {state}")


@app.command()
def history(json_: JsonOpt = False) -> None:
    """List the migrations, newest first."""
    revs = migrate.history()
    if json_:
        print_json(revs)
        return
    table = Table(title="migrations", title_justify="left")
    for col in ("revision", "down", "message", "file"):
        table.add_column(col)
    for r in revs:
        table.add_row(r.revision + (" (head)" if r.is_head else ""), r.down_revision or "base",
                      r.message, r.path)
    console.print(table)


@app.command()
def new(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does.")],
    empty: Annotated[bool, typer.Option("--empty", help="No autogenerate.")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Autogenerate a migration from model changes (compares with the profile's database)."""
    prof = profile_from(profile)
    for path in migrate.new_revision(prof, message, autogenerate=not empty):
        console.print(f"wrote {path} — review it before committing")


@app.command()
def check(profile: ProfileOpt = None, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Exit 1 when the models and the migrations (as applied to the database) differ."""
    prof = profile_from(profile)
    report = migrate.compare(prof, database)
    if json_:
        print_json({**ops_report_dict(report)})
    else:
        if not report.drift:
            console.print(f"{prof.name}/{report.database}: models and migrations agree")
        else:
            if sorted(report.current) != sorted(report.head):
                console.print(Text(f"database at {', '.join(report.current) or 'base'}, "
                                   f"head is {', '.join(report.head)}", style="yellow"))
            for d in report.differences:
                console.print(Text.assemble(("drift:", "red"), f" {d}"))
    if report.drift:
        raise typer.Exit(1)


def ops_report_dict(report: migrate.DriftReport) -> dict:
    return {"database": report.database, "current": report.current, "head": report.head,
            "differences": report.differences, "drift": report.drift}


# --------------------------------------------------------------------------- lint
class LintFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


def _lint_dict(report: migrate.lint.LintReport) -> dict:
    return {
        "range": report.rev_range, "direction": report.direction,
        "migrations": report.migrations, "ok": report.ok,
        "errors": report.errors, "warnings": report.warnings,
        "acknowledged": report.acknowledged, "squawk": report.squawk,
        "sizes_from": report.sizes_from, "sizes_error": report.sizes_error,
        "findings": to_jsonable(report.findings), "cleared": to_jsonable(report.cleared),
    }


@app.command()
def lint(
    rev_range: Annotated[str | None, typer.Argument(
        help="Migrations to lint: REV, FROM:TO (e.g. 0002:head); default all.")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Read table sizes (and pg_proc's volatile functions) from this "
        "profile's database; without it lint needs no database.", show_default=False)] = None,
    database: DatabaseOpt = None,
    versions_dir: VersionsDirOpt = None,
    rules: Annotated[bool, typer.Option("--rules", help="List the rules and exit.")] = False,
    downgrade: Annotated[bool, typer.Option(
        "--downgrade", help="Lint the migrations' downgrades (newest first, as `migrate down` "
        "runs them) instead of their upgrades; acknowledged in LINT_ACK_DOWNGRADE.")] = False,
    format_: Annotated[LintFormat | None, typer.Option(
        "--format", help="text (default), json (= --json), github (GitHub Actions workflow "
        "commands: annotations on the migration's lines) or sarif (SARIF 2.1.0 for code "
        "scanning). The exit code is the same in every format.", show_default=False)] = None,
    json_: JsonOpt = False,
) -> None:
    """Lint the SQL each migration runs (pglast + squawk + schema-aware rules). Exit 1 when a
    finding is an error that the migration does not acknowledge in LINT_ACK (downgrades:
    LINT_ACK_DOWNGRADE)."""
    fmt = _lint_format(format_, json_)
    json_ = fmt == "json"
    if rules:
        if json_:
            print_json(migrate.lint.rules())
            return
        table = Table(title="migrate lint rules", title_justify="left")
        for col in ("rule", "severity", "what"):
            table.add_column(col)
        for r in migrate.lint.rules():
            table.add_row(r.id, r.severity, r.title)
        console.print(table)
        console.print("squawk's own rules also run; not run: " + ", ".join(
            sorted(migrate.lint.SQUAWK_EXCLUDED)) + " (see docs/migrations.md)")
        return
    prof = profile_from(profile) if profile else None
    report = migrate.lint.lint(rev_range, profile=prof, database=database,
                               extra_versions=versions_dir or (), downgrade=downgrade)
    if fmt == "json":
        print_json(_lint_dict(report))
    elif fmt == "sarif":
        print_json(migrate.lint.ci.sarif(report))
    elif fmt == "github":
        for command in migrate.lint.ci.github_commands(report):  # literally, never wrapped
            sys.stdout.write(command + "\n")
        sys.stdout.flush()
        _render_summary(report)
    else:
        _render_lint(report)
    if not report.ok:
        raise typer.Exit(1)


def _lint_format(format_: LintFormat | None, json_: bool) -> str:
    if format_ is not None and json_ and format_.value != "json":
        raise StudyhubError(f"--json and --format {format_.value} contradict each other; "
                            "use one")
    return format_.value if format_ is not None else ("json" if json_ else "text")


def _render_lint(report: migrate.lint.LintReport) -> None:
    if report.sizes_error:
        console.print(Text(f"table sizes unavailable: {report.sizes_error}", style="yellow"))
    for f in report.findings:
        if f.acknowledged:
            continue
        colour = "red" if f.severity == "error" else "yellow"
        where = f"statement {f.statement_number}, line {f.line}" if f.statement_number else "LINT_ACK"
        direction = " downgrade" if f.direction == "downgrade" else ""
        console.print(Text.assemble((f"{f.revision}{direction}", "bold"), f" {f.path} ({where})"))
        table = f" on {f.table}{_table_note(f.table_rows, f.table_bytes)}" if f.table else ""
        console.print(Text.assemble("  ", (f.severity.upper(), colour), f" {f.rule}{table}",
                                    (" (squawk)", "dim") if f.source == "squawk" else ""))
        if f.statement:
            text = f.statement if len(f.statement) <= 200 else f.statement[:197] + "…"
            console.print(Text(f"  {text}", style="dim"))
        console.print(f"  why: {f.why}")
        console.print(f"  fix: {f.recipe}")
        if f.also_flagged_by:
            console.print(f"  also flagged by {', '.join(f.also_flagged_by)}")
        console.print()
    acked: dict[tuple[str, str], list[migrate.lint.Finding]] = {}
    for f in report.findings:
        if f.acknowledged:
            acked.setdefault((f.revision, f.rule), []).append(f)
    if acked:
        console.print(f"acknowledged in {migrate.lint.ack_attribute(report.direction)}:")
        for (rev, rule), group in acked.items():
            tables = sorted({f.table for f in group if f.table})
            console.print(f"  {rev} {rule} ×{len(group)}"
                          + (f" ({', '.join(tables)})" if tables else "")
                          + f": {group[0].acknowledged or ''}")
    _render_summary(report)


def _render_summary(report: migrate.lint.LintReport) -> None:
    colour = "green" if report.ok else "red"
    sizes = f"; sizes from {report.sizes_from}" if report.sizes_from else ""
    what = "downgrade(s)" if report.direction == "downgrade" else "migration(s)"
    console.print(Text.assemble(
        (f"{len(report.migrations)} {what} linted ({', '.join(report.migrations)}): "
         f"{report.errors} error(s), {report.warnings} warning(s), {report.acknowledged} "
         "acknowledged", colour),
        f" (squawk {report.squawk}{sizes})"))


# --------------------------------------------------------------------------- plan
@app.command()
def plan(
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show, before applying, the statements the pending migrations run, the lock each takes
    on which table, what that lock blocks, how long it is held, and the tables' sizes."""
    prof = profile_from(profile)
    result = migrate.plan.plan(prof, to, database=database)
    if json_:
        print_json(result)
        return
    at = ", ".join(result.current) or "base"
    if not result.migrations:
        console.print(f"{result.profile}/{result.database}: at {at}, nothing to apply")
        return
    console.print(f"{result.profile}/{result.database}: at {at}; would apply "
                  + ", ".join(m.revision for m in result.migrations))
    _render_planned(result)


def _render_planned(result: migrate.plan.MigrationPlan) -> None:
    """Each planned statement with the locks it takes (plan and down share this)."""
    for m in result.migrations:
        console.print(Text.assemble("\n", (m.revision, "bold"), f" {m.message} ",
                                    (f"({m.path})", "dim")))
        for st in m.statements:
            text = st.sql if len(st.sql) <= 160 else st.sql[:157] + "…"
            prefix = "in transaction" if st.in_transaction else "autocommit"
            console.print(Text.assemble(f"  {st.number:>3}  {text}  ", (f"({prefix})", "dim")))
            if st.locks is None:
                console.print(Text("       locks unknown (procedural code): review by hand",
                                   style="yellow"))
            for lk in st.locks or ():
                colour = "red" if lk.mode == "ACCESS EXCLUSIVE" else (
                    "yellow" if migrate.statements.strength(lk.mode) >=
                    migrate.statements.strength("SHARE") else "green")
                console.print(Text.assemble(
                    "       ", (lk.mode, colour),
                    f" on {lk.table}{_table_note(lk.rows_estimate, lk.total_bytes)} — blocks "
                    f"{lk.blocks}; held until {st.held_until}"))
            if st.lint:
                how = "migrate lint --downgrade" if result.direction == "downgrade" \
                    else "migrate lint"
                console.print(Text.assemble("       ", (f"lint: {', '.join(st.lint)}", "red"),
                                            f" (studyhub {how})"))
    if result.tables:
        console.print("tables touched: " + "; ".join(
            f"{t.table}{_table_note(t.rows_estimate, t.total_bytes)} strongest lock "
            f"{t.strongest_mode}" for t in result.tables))


# --------------------------------------------------------------------------- roundtrip
@app.command()
def roundtrip(
    revision: Annotated[str, typer.Option("--revision", "-r", help="Migration to test.")] = "head",
    all_: Annotated[bool, typer.Option("--all", help="Every migration, oldest first.")] = False,
    profile: ProfileOpt = None,
    versions_dir: VersionsDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upgrade, downgrade and upgrade again on a throwaway database of the local cluster,
    comparing the full schema (columns, types, defaults, constraints, indexes, …) after each
    step. Exit 1 when a downgrade does not restore the schema exactly."""
    prof = profile_from(profile)
    result = migrate.roundtrip.roundtrip(prof, revision, all_revisions=all_,
                                         extra_versions=versions_dir or ())
    if json_:
        print_json({"database": result.database, "ok": result.ok,
                    "objects_compared": result.objects_compared,
                    "steps": [{**to_jsonable(s), "ok": s.ok} for s in result.steps]})
    else:
        console.print(f"roundtrip on a throwaway database ({result.database}, dropped after)")
        for s in result.steps:
            label = f"{s.revision}: up → down to {s.down_revision or 'base'} → up"
            if s.ok:
                console.print(Text.assemble("  ", ("ok", "green"),
                                            f" {label}: schema restored exactly "
                                            f"({s.duration_s:.1f} s)"))
                continue
            console.print(Text.assemble("  ", ("FAILED", "red"), f" {label}"))
            if s.error:
                console.print(f"    {s.error}")
            if s.downgrade_differences:
                console.print("    the downgrade did not restore the previous schema:")
                for d in s.downgrade_differences:
                    console.print(f"      {d.describe()}")
            if s.reupgrade_differences:
                console.print("    upgrading again did not rebuild the same schema:")
                for d in s.reupgrade_differences:
                    console.print(f"      {d.describe()}")
        console.print(f"{result.objects_compared} schema objects compared")
    if not result.ok:
        raise typer.Exit(1)



# --------------------------------------------------------------------------- rehearse
app.command("rehearse")(rehearse_command)  # in cli/migrate_rehearse.py (this module is long)
