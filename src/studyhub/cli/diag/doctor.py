"""``diag doctor``: the health report (``health.run_doctor``) as a table, then each finding
with its fix; the exit code says the worst status."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import (
    DatabaseOpt,
    JsonOpt,
    ProfileOpt,
    console,
    ops_connection,
    print_json,
)
from studyhub.ops import health

STATUS_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red"}
APP_NAME = "studyhub diag"


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
