"""``studyhub diag``: read-only diagnostics (work as the ops role: pg_monitor only)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from studyhub.cli.common import JsonOpt, ProfileOpt, console, print_json, profile_from
from studyhub.connect import connect
from studyhub.ops import space

app = typer.Typer(help="Read-only diagnostics of a profile's database.", no_args_is_help=True)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


@app.command()
def sizes(
    profile: ProfileOpt = None,
    exact: Annotated[bool, typer.Option("--exact", help="Exact row counts (count(*)).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Database, table, index and TOAST sizes with row counts."""
    prof = profile_from(profile)
    # Exact counts need SELECT on the tables (the app role); estimates need only pg_monitor.
    with connect(prof, "app" if exact else "ops", application_name="studyhub diag") as conn:
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
