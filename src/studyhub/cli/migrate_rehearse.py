"""``studyhub migrate rehearse``: the plan, the confirmation, a spinner with the phase, and the
report as a table or JSON. Registered on ``migrate``'s app by cli/migrate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
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
    print_json,
    profile_from,
)
from studyhub.durations import parse_timeout
from studyhub.humanize import human_bytes
from studyhub.ops.cluster import parse_timestamp
from studyhub.ops.migrate import rehearse as ops

VersionsDirOpt = Annotated[
    list[Path] | None,
    typer.Option("--versions-dir", help="Also read migration files from DIR, on top of the "
                 "chain (rehearse a draft).", exists=True, file_okay=False),
]

def _seconds(value: str | None, what: str) -> float | None:
    """'1s', '500ms', '2min' → seconds (checked like --lock-timeout)."""
    if value is None:
        return None
    text = parse_timeout(value, what=what, max_s=3600)
    number = int(text.rstrip("minsh"))
    unit = text[len(str(number)):]
    return number * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def _render_rehearsal_plan(plan: ops.RehearsalPlan, *, dry_run: bool) -> None:
    console.print(Text.assemble(("migrate rehearse", "bold"),
                                f" on {plan.profile}/{plan.database} ({plan.provider}):"))
    for line in plan.summary:
        console.print(f"  • {line}")
    if plan.expected_duration:
        console.print(f"  • expected duration: {plan.expected_duration}")
    fp = plan.fork_plan
    if fp is not None:
        for line in fp.warnings:
            console.print(Text(f"  ! {line}", style="yellow"))
        if fp.requests:
            console.print("  API requests it would send:" if dry_run else "  API requests:")
            for r in fp.requests:
                body = f" {json.dumps(r.body, separators=(',', ':'))}" if r.body is not None \
                    else ""
                console.print(f"    {r.method} {r.path}{body}", soft_wrap=True)
            if plan.provider != "local":
                console.print(f"    (then) DELETE /v2/databases/<id of {plan.fork}>")
    if dry_run:
        console.print("dry run: nothing was sent or changed")


def _render_rehearsal(report: ops.RehearsalReport) -> None:
    table = Table(title=f"rehearsal of {', '.join(report.revisions)} on fork {report.fork} "
                        f"({report.provider})", title_justify="left")
    for col in ("rev", "#", "statement", "wall s", "lock (held s)", "waits: n / max s / p99 s",
                "write blocked s", "rewrote", "WAL", "verdict"):
        table.add_column(col, overflow="fold")
    for s in report.statements:
        m = s.measure
        lock = f"{m.lock_mode} on {m.lock_relation or '?'}" if m.lock_mode else "-"
        if m.lock_held_s is not None and m.lock_mode:
            lock += f" ({m.lock_held_s:.2f})"
        verdict = Text("pass", style="green") if s.passed else Text(
            "FAIL: " + "; ".join(s.reasons), style="red")
        table.add_row(Text(m.revision), str(m.index), Text(m.statement), f"{m.wall_s:.3f}",
                      Text(lock), f"{m.waits.sessions} / {m.waits.max_s:.2f} / "
                      f"{m.waits.p99_s:.2f}", f"{m.blocked_writes_max_s:.2f}",
                      Text(", ".join(m.rewrote) or "-"), human_bytes(m.wal_bytes), verdict)
    console.print(table)
    if report.failed is not None:
        f = report.failed
        console.print(Text.assemble(("failed on the fork: ", "red"),
                                    f"{f.revision} statement {f.index}: {f.statement}"))
        if f.error:
            console.print(f"  {f.error}")
    w = report.workload
    console.print(f"workload: {w.requests:,} request(s), {w.errors} error(s), p50 {w.p50_s:.3f} s, "
                  f"p99 {w.p99_s:.3f} s, max {w.max_s:.3f} s")
    console.print(f"fork {report.fork}: {report.fork_removal}; {report.profile}/{report.database} "
                  f"untouched (at {', '.join(report.source_revisions_after) or 'base'})")
    colour = "green" if report.passed else "red"
    console.print(Text.assemble(("verdict: " + report.summary, colour)))
    for reason in report.reasons:
        console.print(Text(f"  {reason}", style="red"))


def rehearse(
    profile: ProfileOpt = None,
    at: Annotated[str, typer.Option(
        "--at", help="Fork as of this point in time: ISO 8601 with a zone, or 'now'.")] = "now",
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
    database: DatabaseOpt = None,
    versions_dir: VersionsDirOpt = None,
    workload: Annotated[str, typer.Option(
        "--workload", help="app: reads and writes shaped like the API's; top: "
                           "pg_stat_statements' top statements replayed.")] = "app",
    clients: Annotated[int, typer.Option("--clients", help="Workload connections.")] = 4,
    max_blocked_write: Annotated[str | None, typer.Option(
        "--max-blocked-write", help="Fail when a write waits longer (default 1s, or "
        "max_blocked_write_s of migrate.rehearse in studyhub.toml).", show_default=False)] = None,
    max_access_exclusive: Annotated[str | None, typer.Option(
        "--max-access-exclusive", help="Fail when ACCESS EXCLUSIVE is held longer (default 1s).",
        show_default=False)] = None,
    max_rewrite_mb: Annotated[float | None, typer.Option(
        "--max-rewrite-mb", help="Fail when a table bigger than this is rewritten (default "
        "100).", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The fork's name (default rehearse-<time>-<random>).")] = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Give up waiting for the fork after this many seconds.")] = 3600,
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", help="Seconds between status checks on DigitalOcean.")] = 10,
) -> None:
    """Rehearse the pending migrations on a point-in-time fork of the target while a
    synthetic workload runs there; report per statement its time, locks, the waits behind it,
    rewrites and WAL; remove the fork (always); judge against thresholds (exit 1 on fail).
    Shows the plan first (on DigitalOcean: size, cost, requests); --dry-run sends nothing; the
    fork needs --yes or confirmation. Production must be named with --profile production."""
    if workload not in ("app", "top"):
        raise typer.BadParameter("choose app or top", param_hint="--workload")
    if clients < 1:
        raise typer.BadParameter("at least 1", param_hint="--clients")
    prof = profile_from(profile)
    if not dry_run:  # before reading anything: production must be named explicitly
        prof.require_changes_allowed("migrate rehearse (makes a fork of the cluster)")
    when = None if at.strip().lower() == "now" else parse_timestamp(at)
    limits = ops.thresholds({
        "max_blocked_write_s": _seconds(max_blocked_write, "--max-blocked-write"),
        "max_access_exclusive_s": _seconds(max_access_exclusive, "--max-access-exclusive"),
        "max_rewrite_table_bytes": (None if max_rewrite_mb is None
                                    else int(max_rewrite_mb * 1024 * 1024)),
    })
    plan = ops.rehearse_plan(prof, at=when, name=name, to=to, database=database,
                             extra_versions=versions_dir or (),
                             workload=ops.WorkloadSpec(kind=workload, clients=clients),
                             limits=limits, offline=dry_run, timeout_s=timeout)
    if plan.nothing_pending or dry_run:
        if json_:
            print_json({"plan": plan, "report": None})
        elif plan.nothing_pending:
            console.print(plan.summary[0])
        else:
            _render_rehearsal_plan(plan, dry_run=True)
        return
    if not json_:
        _render_rehearsal_plan(plan, dry_run=False)
    confirm_destructive(prof, f"migrate rehearse (creates fork {plan.fork}, removed after)",
                        yes=yes)
    try:
        with err_console.status(Text("rehearsing…")) as spinner:
            report = ops.rehearse(prof, plan, progress=lambda m: spinner.update(Text(m)),
                                  timeout_s=timeout, poll_interval_s=poll_interval)
    except ops.ForkNotRemovedError as exc:
        if exc.report is not None:  # the rehearsal's findings are not lost with the fork
            print_json({"plan": plan, "report": exc.report}) if json_ \
                else _render_rehearsal(exc.report)
        raise
    if json_:
        print_json({"plan": plan, "report": report})
    else:
        _render_rehearsal(report)
    if not report.passed:
        raise typer.Exit(1)
