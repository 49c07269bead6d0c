"""``studyhub seed``: realistic, deterministic demo data (local, or staging named explicitly)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from studyhub.cli.common import JsonOpt, ProfileOpt, console, err_console, print_json, profile_from
from studyhub.errors import RefusedError
from studyhub.ops.seed import (
    DEFAULT_SEED,
    SeedProgress,
    SeedResult,
    check_seed_allowed,
    seed_database,
)
from studyhub.profiles import load_settings

PHASE_LABELS = {
    "keys": "rebuilding keys",
    "indexes": "rebuilding indexes",
    "foreign_keys": "validating foreign keys",
    "analyze": "analyzing",
}


class _RowsColumn(ProgressColumn):
    """"12,345/60,000 rows" for table bars; nothing for the rebuild line."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed):,}/{int(task.total):,} rows", style="progress.download")


class _ProgressBars:
    """One bar per table (rows loaded against the expected count), then a line for the
    rebuild of keys, indexes and foreign keys."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.status: TaskID | None = None

    def __call__(self, event: SeedProgress) -> None:
        if not self.tasks:
            for table, expected in event.expected_rows.items():
                self.tasks[table] = self.progress.add_task(table, total=expected)
        for table, rows in event.rows.items():
            task = self.tasks[table]
            done = event.phase != "load"
            self.progress.update(task, completed=rows,
                                 total=rows if done else max(rows, event.expected_rows[table]))
        if event.phase != "load":
            label = f"{PHASE_LABELS[event.phase]}: {event.detail}"
            if self.status is None:
                self.status = self.progress.add_task(label, total=None)
            else:
                self.progress.update(self.status, description=label)


def _summary(result: SeedResult) -> None:
    table = Table(title=f"seeded {result.profile}/{result.database} (seed {result.seed})",
                  title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}")
    table.add_row(Text("total", style="bold"), Text(f"{result.total_rows:,}", style="bold"))
    console.print(table)
    how = ("keys and indexes dropped and rebuilt" if result.strategy == "rebuild"
           else f"loaded with keys and indexes in place: {result.strategy_reason}")
    console.print(Text.assemble(f"{result.total_rows:,} rows in {result.duration_s:.1f} s: ",
                                (f"{result.rows_per_s:,.0f} rows/s", "bold"), f" ({how})"))
    if result.heavy_student_id:
        console.print(f"heavy student: {result.heavy_student_id}")


def seed(
    students: Annotated[int, typer.Option("--students", "-n", help="How many students to add.",
                                          show_default=False)],
    seed_: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = DEFAULT_SEED,
    heavy_student: Annotated[bool, typer.Option(
        "--heavy-student", help="Also add one student with 10,000+ cards and 100,000+ reviews."
    )] = False,
    if_empty: Annotated[bool, typer.Option(
        "--if-empty", help="Do nothing if the database already has students."
    )] = False,
    profile: ProfileOpt = None,
    database: Annotated[str | None, typer.Option("--database", "-d",
                                                 help="Override the database.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Fill the database with realistic, deterministic demo data (never production).

    Without --if-empty, a database that already has students gets more (appended)."""
    if (profile or load_settings().profile) == "production":  # before even resolving it
        raise RefusedError("refusing to seed production: demo data never goes into production")
    prof = profile_from(profile)
    check_seed_allowed(prof)
    with Progress(
        TextColumn("{task.description}", markup=False,
                   table_column=Column(width=28, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=20),
        _RowsColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        result = seed_database(prof, students=students, seed=seed_, heavy_student=heavy_student,
                               database=database, if_empty=if_empty,
                               progress=_ProgressBars(progress))
    if result.skipped:
        if json_:
            print_json(result)
        else:
            console.print(f"{result.profile}/{result.database} already has "
                          f"{result.existing_students:,} students; nothing to do (--if-empty)")
        return
    if json_:
        print_json(result)
        return
    if result.existing_students:
        console.print(f"appended {result.students:,} students to the "
                      f"{result.existing_students:,} already in {result.database}")
    _summary(result)
