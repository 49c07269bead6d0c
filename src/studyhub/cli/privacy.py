"""``studyhub privacy``: GDPR export, erasure, the erasure ledger and pseudonymised analytics."""

from __future__ import annotations

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
    err_console,
    print_json,
    profile_from,
)
from studyhub.connect import connect
from studyhub.ops import erasure
from studyhub.ops import privacy as ops
from studyhub.ops.privacy import anonymize as anon
from studyhub.ops.privacy import generate_key_file, key_file, load_key

app = typer.Typer(
    help="GDPR export and erasure (with proof), the erasure ledger, pseudonymised analytics.",
    no_args_is_help=True,
)

StudentOpt = Annotated[str | None, typer.Option("--student", help="The student's id (UUID).",
                                                show_default=False)]
EmailOpt = Annotated[str | None, typer.Option("--email", help="The account's email address.",
                                              show_default=False)]
DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d",
                                                 help="Database (default: the profile's).")]
LockTimeoutOpt = Annotated[str, typer.Option(
    "--lock-timeout", help="Give up waiting for a lock after this long (then retry, 3 tries).")]


def _counts_table(counts: dict[str, int], header: str) -> Table:
    table = Table()
    table.add_column("table")
    table.add_column(header, justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    table.add_row(Text("total", style="bold"), Text(f"{sum(counts.values()):,}", style="bold"))
    return table


@app.command()
def policy(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Which tables hold personal data (from the catalog's foreign keys) and what export and
    erase do with each. Exit 1 if a table has no policy. Works as the ops role."""
    prof = profile_from(profile)
    with connect(prof, "ops", application_name="studyhub privacy") as conn:
        report = ops.policy_report(conn)
    if json_:
        print_json(report)
    else:
        console.print(f"{prof.name}/{report.database}: personal-data policy")
        table = Table()
        for col in ("table", "action", "export", "the person's rows / why kept"):
            table.add_column(col)
        colour = {"erase": "", "keep": "dim", "unclassified": "bold red", "absent": "yellow"}
        for row in report.tables:
            style = colour.get(row.status, "")
            table.add_row(row.table, Text(row.status, style=style),
                          "yes" if row.exported else "no", row.selects)
        console.print(table)
        console.print(f"erase order: {' → '.join(report.erase_order)}")
        for p in report.problems:
            console.print(Text.assemble(("problem:", "bold red"), f" {p}"))
    if not report.complete:
        raise typer.Exit(1)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="The zip file to write (0600).")],
    student: StudentOpt = None,
    email: EmailOpt = None,
    profile: ProfileOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Everything held about one person (GDPR art. 15/20) as a zip: one JSON document, one CSV
    per table, manifest.json (counts, sha256) and a README; from one consistent snapshot."""
    ops.check_person_args(student, email)
    prof = profile_from(profile)
    key = load_key("export personal data (the audit line names the person by pseudonym)")
    result = ops.run_export(prof, key, out, student_id=student, email=email)
    if json_:
        print_json(result)
        return
    console.print(_counts_table(result.rows_by_table, "rows"))
    console.print(f"wrote {result.path} (0600, {result.zip_bytes:,} bytes): personal_data.json, "
                  f"{len(result.rows_by_table)} CSV files, manifest.json (sha256 of each), "
                  f"README.txt; one snapshot at schema {result.schema_revision}, "
                  f"{result.duration_s:.3f} s")


def _render_erasure(result: ops.ErasureResult) -> None:
    who = f"student {result.student_id}" if result.student_id else f"account {result.user_id}"
    console.print(f"would erase {who}:" if result.dry_run else f"erased {who}:")
    console.print(_counts_table(result.rows_by_table,
                                "would delete" if result.dry_run else "deleted"))
    if result.dry_run:
        console.print("dry run: nothing was changed")
    else:
        console.print(f"verified before commit: no row in any policy table refers to them "
                      f"({result.duration_s:.3f} s, attempt {result.attempts}); ledger and "
                      f"audit name them as {result.pseudonym}")
    _render_not_cleaned(result.not_cleaned)


MAX_ITEMS_SHOWN = 10


def _render_not_cleaned(places: list[ops.PlaceNotCleaned]) -> None:
    if not places:
        return
    console.print(Text.assemble(("not cleaned", "bold yellow"),
                                " (outside the database; they may still hold the person):"))
    for p in places:
        console.print(Text.assemble("  ", (p.kind, "bold"), f": {p.location}"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        if p.items:
            shown = ", ".join(p.items[:MAX_ITEMS_SHOWN])
            if len(p.items) > MAX_ITEMS_SHOWN:
                shown += f" … and {len(p.items) - MAX_ITEMS_SHOWN} more (--json lists all)"
            grid.add_row("    ", shown)
        grid.add_row("    may hold:", p.holds)
        grid.add_row("    kept:", p.kept)
        grid.add_row("    do:", p.action)
        console.print(grid)


@app.command()
def erase(
    student: StudentOpt = None,
    email: EmailOpt = None,
    profile: ProfileOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
    lock_timeout: LockTimeoutOpt = ops.DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Erase everything about one person (GDPR art. 17) in one transaction, verify before
    commit that nothing still refers to them, record their ids in the erasure ledger; then
    name the places outside the database it could not clean (server log, WAL, backups, forks,
    exports) and what to do about each."""
    ops.check_person_args(student, email)
    prof = profile_from(profile)
    if not dry_run:
        prof.require_changes_allowed("erase a person")
    key = load_key("erase (the audit line and ledger name the person by keyed pseudonym)")
    plan = erasure.run_erase(prof, key, student_id=student, email=email, dry_run=True,
                         lock_timeout=lock_timeout)
    if dry_run:
        print_json(plan) if json_ else _render_erasure(plan)
        return
    if not json_ and not yes:
        _render_erasure(plan)
    confirm_destructive(prof, f"erase {plan.rows_total:,} rows about this person", yes=yes)
    result = erasure.run_erase(prof, key, student_id=student, email=email, lock_timeout=lock_timeout)
    print_json(result) if json_ else _render_erasure(result)


@app.command()
def ledger(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Also write it as a 0600 JSON-lines file (keep it beside backups).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """The erasure ledger: ids of erased people (no email, no name), oldest first."""
    prof = profile_from(profile)
    with connect(prof, "app", database=database, application_name="studyhub privacy") as conn:
        entries = ops.erasure_ledger(conn)
    if out:
        ops.write_ledger_file(entries, out)
    if json_:
        print_json(entries)
        return
    console.print(f"{prof.name}: erasure ledger ({len(entries)} people)")
    table = Table()
    for col in ("erased at", "pseudonym", "user id", "student id", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for e in entries:
        table.add_row(f"{e.erased_at:%Y-%m-%d %H:%M:%S}", e.pseudonym, str(e.user_id),
                      str(e.student_id or "-"), f"{e.rows_deleted:,}")
    console.print(table)
    if out:
        console.print(f"wrote {out} (0600)")


@app.command("reapply-erasures")
def reapply_erasures(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    ledger_file: Annotated[Path | None, typer.Option(
        "--ledger-file", help="Ledger file to apply (default: the ledger of the profile's own "
        "database); the target database's own ledger is always applied too.")] = None,
    fork: Annotated[str | None, typer.Option(
        "--fork", help="Target a point-in-time fork of the profile's cluster (made with "
        "`cluster fork`, on its own host/port) instead of --database.", show_default=False)
    ] = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
    lock_timeout: LockTimeoutOpt = ops.DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Erase again, in DATABASE (e.g. a restored backup) or a FORK, everyone in the erasure
    ledger who is present there; one transaction, verified; safe to repeat."""
    prof = profile_from(profile)
    options = dict(ledger_file=ledger_file, fork=fork, database=database,
                   lock_timeout=lock_timeout)
    plan = erasure.run_reapply(prof, dry_run=True, **options)
    if dry_run or plan.people_present == 0:
        print_json(plan) if json_ else _render_reapply(plan)
        return
    if not json_ and not yes:
        _render_reapply(plan)
    confirm_destructive(prof, f"erase again {plan.people_present} person(s) "
                        f"({plan.rows_total:,} rows) in {plan.database}", yes=yes)
    result = erasure.run_reapply(prof, **options)
    print_json(result) if json_ else _render_reapply(result)


def _render_reapply(result: ops.ReapplyResult) -> None:
    present = [p for p in result.people if p.present]
    if not present:
        console.print(f"{result.database}: {len(result.people)} ledger entries, none present: "
                      "nothing to erase")
        return
    console.print(f"{result.database}: people from the erasure ledger still present")
    table = Table()
    table.add_column("pseudonym")
    table.add_column("rows", justify="right")
    table.add_column("largest tables")
    for p in present:
        top = sorted(p.rows_by_table.items(), key=lambda kv: -kv[1])[:3]
        table.add_row(p.pseudonym, f"{p.rows_total:,}", ", ".join(f"{t} {n:,}" for t, n in top))
    console.print(table)
    verb = "would erase again" if result.dry_run else "erased again"
    line = (f"{len(result.people)} ledger entries, {len(present)} present: {verb} "
            f"{result.rows_total:,} rows")
    if result.dry_run:
        line += " (dry run: nothing was changed)"
    else:
        line += (f"; verified before commit; {result.ledger_recorded} entries added to "
                 f"{result.database}'s own ledger ({result.duration_s:.3f} s)")
    console.print(line)


@app.command()
def anonymize(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (0600).")],
    dataset: Annotated[str, typer.Option(
        "--dataset", help=f"One of: {', '.join(anon.DATASETS)}.")] = "reviews",
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    min_group: Annotated[int, typer.Option(
        "--min-group", help="Drop rows whose quasi-identifiers (year group, subject ...; for "
        "students every column but the pseudonym) are shared by fewer students than this.")
    ] = anon.DEFAULT_MIN_GROUP,
    profile: ProfileOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Pseudonymised analytics export: HMAC-SHA256 pseudonyms under the secret key, no free
    text, no emails or names, days instead of times, small groups suppressed."""
    if dataset not in anon.DATASETS:
        raise typer.BadParameter(f"choose one of {', '.join(anon.DATASETS)}",
                                 param_hint="--dataset")
    prof = profile_from(profile)
    key = load_key("make pseudonymised analytics")
    result = ops.run_anonymize(prof, key, out, dataset=dataset, fmt=fmt,  # type: ignore[arg-type]
                               min_group=min_group)
    if json_:
        print_json(result)
        return
    console.print(
        f"wrote {result.rows_written:,} {dataset} rows to {result.path} ({fmt}, 0600); "
        f"suppressed {result.rows_suppressed:,} rows in {result.groups_suppressed} group(s) of "
        f"fewer than {min_group} students by {', '.join(result.quasi_identifiers)}")
    if len(anon.DATASETS[dataset].levels) > 1:
        console.print(f"generalised (level {result.level} of "
                      f"{len(anon.DATASETS[dataset].levels) - 1}): {result.generalisation}")


@app.command()
def keygen(
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Key file (default: $STUDYHUB_PSEUDONYM_KEY_FILE or "
        "~/.config/studyhub/pseudonym.key).", show_default=False)] = None,
) -> None:
    """Create the secret pseudonym key (0600). Never replaces an existing key: every pseudonym
    made with it would change."""
    path = generate_key_file(out or key_file())
    err_console.print(f"wrote a new pseudonym key to {path} (0600); back it up with the other "
                      "secrets, never beside exports")
