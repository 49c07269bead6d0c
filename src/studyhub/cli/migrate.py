"""``studyhub migrate``: Alembic with a lock_timeout, never through the pooler."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from studyhub.audit import write_audit
from studyhub.cli.common import (
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    YesOpt,
    confirm_destructive,
    console,
    print_json,
    profile_from,
    refuse_unless_allowed,
)
from studyhub.ops import migrate as ops

app = typer.Typer(help="Apply, undo and inspect schema migrations (Alembic).", no_args_is_help=True)

LockTimeoutOpt = Annotated[
    str, typer.Option("--lock-timeout", help="Give up waiting for a lock after this long.")
]
DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", help="Override the database.")]


def _show(result: ops.MigrationResult, verb: str) -> None:
    before = ", ".join(result.from_revisions) or "base"
    after = ", ".join(result.to_revisions) or "base"
    if before == after:
        console.print(f"{result.profile}/{result.database}: already at {after}")
    else:
        console.print(f"{result.profile}/{result.database}: {verb} {before} → {after}")


@app.command()
def up(
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    lock_timeout: LockTimeoutOpt = ops.DEFAULT_LOCK_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Upgrade the database to head (or --to REV)."""
    prof = profile_from(profile)
    result = ops.upgrade(prof, to, database=database, lock_timeout=lock_timeout)
    if result.from_revisions != result.to_revisions:
        write_audit("migrate.up", prof.name, database=result.database,
                    from_revisions=result.from_revisions, to_revisions=result.to_revisions)
    print_json(result) if json_ else _show(result, "upgraded")


@app.command()
def down(
    to: Annotated[str, typer.Option("--to", help="Target: a revision, -1 (one step) or base.")],
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    lock_timeout: LockTimeoutOpt = ops.DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Downgrade (undo migrations). Shows the SQL first; needs --yes or confirmation.
    Production must be named with --profile production."""
    prof = profile_from(profile)
    what = "downgrade to base (drops the whole schema)" if to == "base" else f"downgrade to {to}"
    refuse_unless_allowed(prof, what)  # before connecting: production must be named explicitly
    cur = ops.current(prof, database)
    plan = ops.downgrade_plan(cur, to)
    if not plan:
        console.print(f"nothing to undo: the database is at {', '.join(cur) or 'base'}")
        return
    console.print(f"[bold]would undo[/] on {prof.name}: " + ", ".join(
        f"{r.revision} ({r.message})" for r in plan))
    if dry_run:
        return
    confirm_destructive(prof, what, yes=yes)
    result = ops.downgrade(prof, to, database=database, lock_timeout=lock_timeout)
    write_audit("migrate.down", prof.name, database=result.database, target=to,
                from_revisions=result.from_revisions, to_revisions=result.to_revisions)
    _show(result, "downgraded")


@app.command()
def current(profile: ProfileOpt = None, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Show the revision the database is at."""
    prof = profile_from(profile)
    cur = ops.current(prof, database)
    heads = ops.heads()
    if json_:
        print_json({"profile": prof.name, "current": cur, "head": heads,
                    "at_head": sorted(cur) == sorted(heads)})
        return
    state = "(head)" if sorted(cur) == sorted(heads) else f"(head is {', '.join(heads)})"
    console.print(f"{prof.name}: {', '.join(cur) or 'base'} {state}")


@app.command()
def history(json_: JsonOpt = False) -> None:
    """List the migrations, newest first."""
    revs = ops.history()
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
    for path in ops.new_revision(prof, message, autogenerate=not empty):
        console.print(f"wrote {path} — review it before committing")


@app.command()
def check(profile: ProfileOpt = None, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Exit 1 when the models and the migrations (as applied to the database) differ."""
    prof = profile_from(profile)
    report = ops.compare(prof, database)
    if json_:
        print_json({**ops_report_dict(report)})
    else:
        if not report.drift:
            console.print(f"{prof.name}/{report.database}: models and migrations agree")
        else:
            if sorted(report.current) != sorted(report.head):
                console.print(f"[yellow]database at {', '.join(report.current) or 'base'}, "
                              f"head is {', '.join(report.head)}[/]")
            for d in report.differences:
                console.print(f"[red]drift:[/] {d}")
    if report.drift:
        raise typer.Exit(1)


def ops_report_dict(report: ops.DriftReport) -> dict:
    return {"database": report.database, "current": report.current, "head": report.head,
            "differences": report.differences, "drift": report.drift}
