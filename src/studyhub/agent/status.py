"""``agent status`` and ``agent jobs``: what ran, when, how long, how it ended, what is next.

Per profile, the runs and heartbeat come from the database (``ops.agent_runs``,
``ops.agent_heartbeats``, as the ops role) when it answers, else from the state directory's
``status.json`` that the running agent writes after every run — so the status is there while
the database is down. Next due times come from ``status.json`` (the running agent's own
schedule), else from the configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from studyhub.agent.config import AgentConfig, JobConfig, next_run
from studyhub.agent.jobs import APPLICATION_NAME, error_line
from studyhub.agent.runtime import STATUS_FILE
from studyhub.connect import connect
from studyhub.ops import agent_records
from studyhub.profiles import resolve_profile

FAILED = ("failed", "timeout")  # a last run like this makes `agent status` exit non-zero


@dataclass
class JobStatus:
    job: str
    kind: str
    schedule: str  # "cron 0 3 * * *" or "every 60 s"
    timeout_s: float
    enabled: bool
    last_outcome: str | None = None
    last_started_at: datetime | None = None
    last_duration_s: float | None = None
    last_detail: str | None = None
    next_due: datetime | None = None
    running_since: datetime | None = None
    not_ok_last_day: int | None = None


@dataclass
class ProfileStatus:
    profile: str
    source: str  # database | state file | none
    error: str | None  # why the database could not be read
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    heartbeat_stale: bool
    jobs: list[JobStatus] = field(default_factory=list)

    @property
    def failed_jobs(self) -> list[str]:
        return [j.job for j in self.jobs if j.last_outcome in FAILED]


@dataclass
class AgentStatus:
    agent: str
    state_file: str
    pid: int | None
    started_at: datetime | None
    stopped_at: datetime | None
    stale_after_s: float
    profiles: list[ProfileStatus]
    ok: bool  # no job's last run failed or timed out, and every heartbeat is fresh


def describe_schedule(job: JobConfig) -> str:
    return f"cron {job.schedule}" if job.schedule else f"every {job.every_s:g} s"


def next_runs(job: JobConfig, count: int = 3, after: datetime | None = None) -> list[datetime]:
    t = after or datetime.now(timezone.utc)
    out = []
    for _ in range(count):
        t = next_run(job, t)
        out.append(t)
    return out


def _time(raw: Any) -> datetime | None:
    return datetime.fromisoformat(raw) if isinstance(raw, str) and raw else None


def read_state_file(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def agent_status(config: AgentConfig, profiles: Sequence[str] | None = None,
                 state_dir: Path | None = None) -> AgentStatus:
    state_dir = state_dir or config.state_path()
    state = read_state_file(state_dir)
    if state.get("agent") != config.name:
        state = {}
    stale_after = max(3 * config.heartbeat_every_s, 30.0)
    now = datetime.now(timezone.utc)
    out = []
    for name in list(profiles or config.profiles):
        file_profile = state.get("profiles", {}).get(name, {})
        file_jobs = file_profile.get("jobs", {})
        jobs = {n: JobStatus(n, j.kind, describe_schedule(j), j.effective_timeout_s, j.enabled)
                for n, j in config.jobs.items()}
        source, error, beat_at, age = "none", None, None, None
        try:
            prof = resolve_profile(name)
            with connect(prof, "ops", autocommit=True, connect_timeout=3,
                         application_name=APPLICATION_NAME) as conn:
                runs = [r for r in agent_records.last_runs(conn, name) if r.agent == config.name]
                beats = [b for b in agent_records.heartbeats(conn, name)
                         if b.agent == config.name]
            source = "database"
            for r in runs:
                js = jobs.setdefault(r.job, JobStatus(r.job, "?", "not configured", 0, False))
                js.last_outcome, js.last_started_at = r.outcome, r.started_at
                js.last_duration_s, js.last_detail = r.duration_s, r.detail
                js.not_ok_last_day = r.not_ok_last_day
            if beats:
                beat_at, age = beats[0].beat_at, beats[0].age_s
        except Exception as exc:  # noqa: BLE001 - the database is down: the state file tells
            error = error_line(exc)
        if source == "none" and file_profile:
            source = "state file"
            beat_at = _time(file_profile.get("heartbeat_at"))
            age = (now - beat_at).total_seconds() if beat_at else None
            for n, fj in file_jobs.items():
                last = fj.get("last") or {}
                if n in jobs and last:
                    js = jobs[n]
                    js.last_outcome, js.last_started_at = last.get("outcome"), _time(
                        last.get("started_at"))
                    js.last_duration_s, js.last_detail = last.get("duration_s"), last.get("detail")
        for n, js in jobs.items():
            fj = file_jobs.get(n, {}) if not state.get("stopped_at") else {}
            js.running_since = _time(fj.get("running_since"))
            js.next_due = _time(fj.get("next_due"))
            if js.next_due is None and n in config.jobs and config.jobs[n].enabled:
                js.next_due = next_runs(config.jobs[n], 1, now)[0]
        stale = age is None or age > stale_after
        out.append(ProfileStatus(name, source, error, beat_at, age, stale, list(jobs.values())))
    ok = all(not p.failed_jobs and not p.heartbeat_stale for p in out)
    return AgentStatus(config.name, str(state_dir / STATUS_FILE), state.get("pid"),
                       _time(state.get("started_at")), _time(state.get("stopped_at")),
                       stale_after, out, ok)
