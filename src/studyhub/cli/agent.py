"""``studyhub agent``: run the scheduled jobs (foreground), and tell what they did."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from studyhub.agent import config as agent_config
from studyhub.agent import status as agent_status
from studyhub.agent.runtime import Agent
from studyhub.cli.common import JsonOpt, console, err_console, print_json
from studyhub.humanize import human_s

app = typer.Typer(help="The always-on agent: scheduled doctor, history sampling, capture, "
                       "backups, prune, drills; its status.", no_args_is_help=True)

ProfilesOpt = Annotated[list[str] | None, typer.Option(
    "--profile", "-p", help=r"A profile to watch (repeatable; default: \[agent] profiles).",
    show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help=r"The studyhub.toml to read \[agent] from (default $STUDYHUB_CONFIG or "
                     "./studyhub.toml).", show_default=False)]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("studyhub.agent").setLevel(logging.INFO)


@app.command()
def run(
    profile: ProfilesOpt = None,
    config: ConfigOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Run every job due now once (every_s jobs; cron jobs whose minute matches), wait for them, exit (1 if any did not end ok). For cron lines and containers' one-shot runs.")] = False,
    job: Annotated[list[str] | None, typer.Option("--job", help="With --once: run this job now whatever its schedule (repeatable).", show_default=False)] = None,
) -> None:
    """Run in the foreground until SIGTERM/SIGINT: each watched profile's jobs on their
    schedules, one line per run on stderr. On SIGTERM running jobs may finish within
    stop_grace_s, then are cancelled; exit 0."""
    cfg = agent_config.load_agent_config(config)
    if job and not once:
        raise typer.BadParameter("--job needs --once")
    _setup_logging()
    agent = Agent(cfg, profile or None)
    if once:
        outcomes = agent.run_once(job or None)
        if any(o.outcome != "ok" for o in outcomes):
            raise typer.Exit(1)
        return
    agent.run_forever()


@app.command()
def status(profile: ProfilesOpt = None, config: ConfigOpt = None, json_: JsonOpt = False) -> None:
    """Per profile and job: the last run (when, how long, outcome, detail) and the next due
    time, and the heartbeat's age — from the database, or from the agent's status.json when
    the database is down. Exit 1 when a job's last run failed or timed out, or a heartbeat is
    stale."""
    cfg = agent_config.load_agent_config(config)
    st = agent_status.agent_status(cfg, profile or None)
    if json_:
        print_json(st)
    else:
        _render_status(st)
    if not st.ok:
        raise typer.Exit(1)


def _when(t) -> str:  # noqa: ANN001
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _render_status(st: agent_status.AgentStatus) -> None:
    state = ("stopped at " + _when(st.stopped_at)) if st.stopped_at else (
        f"pid {st.pid}, started {_when(st.started_at)}" if st.pid else "no status file")
    console.print(f"agent {st.agent}: {state} ({st.state_file})")
    for p in st.profiles:
        beat = (Text(f"heartbeat {human_s(p.heartbeat_age_s)} ago",
                     style="red" if p.heartbeat_stale else "green")
                if p.heartbeat_age_s is not None else Text("no heartbeat", style="red"))
        console.print(Text.assemble((p.profile, "bold"), f" (from {p.source}) ", beat,
                                    (f"; database: {p.error}" if p.error else "")))
        table = Table(title_justify="left")
        for col in ("job", "schedule", "last run", "took", "outcome", "next due", "detail"):
            table.add_column(col, overflow="fold")
        for j in p.jobs:
            style = {"ok": "green", "failed": "red", "timeout": "red",
                     "missed": "yellow", "cancelled": "yellow"}.get(j.last_outcome or "", "")
            outcome = Text(j.last_outcome or "-", style=style)
            if j.running_since:
                outcome.append(f" (running since {_when(j.running_since)})")
            table.add_row(j.job, j.schedule if j.enabled else "disabled", _when(j.last_started_at),
                          f"{j.last_duration_s:.1f} s" if j.last_duration_s is not None else "-",
                          outcome, _when(j.next_due), j.last_detail or "")
        console.print(table)
    if not st.ok:
        err_console.print(Text("not ok: a job's last run failed or a heartbeat is stale "
                               f"(over {st.stale_after_s:g} s)", style="red"))


@app.command()
def jobs(config: ConfigOpt = None, json_: JsonOpt = False) -> None:
    """The configured jobs: kind, schedule, timeout, and their next three run times."""
    cfg = agent_config.load_agent_config(config)
    rows = [{"job": name, "kind": j.kind, "enabled": j.enabled, "schedule": j.schedule,
             "every_s": j.every_s, "timeout_s": j.effective_timeout_s, "target": j.target,
             "next_runs": agent_status.next_runs(j) if j.enabled else []}
            for name, j in cfg.jobs.items()]
    if json_:
        print_json({"agent": cfg.name, "profiles": cfg.profiles,
                    "heartbeat_every_s": cfg.heartbeat_every_s, "jobs": rows})
        return
    console.print(f"agent {cfg.name}: profiles {', '.join(cfg.profiles)}, heartbeat every "
                  f"{cfg.heartbeat_every_s:g} s")
    table = Table(title_justify="left")
    for col in ("job", "kind", "schedule", "timeout", "next runs"):
        table.add_column(col)
    for r, (name, j) in zip(rows, cfg.jobs.items()):
        table.add_row(name, j.kind,
                      agent_status.describe_schedule(j) if j.enabled else "disabled",
                      human_s(j.effective_timeout_s),
                      ", ".join(_when(t) for t in r["next_runs"]))
    console.print(table)
