"""The agent process: one loop (thread) per watched profile, each with its own jobs.

A loop connects as the ops role, upserts its heartbeat (``ops.agent_heartbeats``) every
``heartbeat_every_s`` and starts each job when it is due (``scheduler.Slots``; a job due while
its previous run still runs is recorded as ``missed``). When the profile cannot be reached it
is retried with exponential backoff (1 s, 2 s, … ``reconnect_max_s``); meanwhile its due jobs
are recorded as failed ("not run: … unreachable") and its finished runs wait in memory to be
written once it is back. One profile's trouble never stops another's loop.

Every finished run goes to ``ops.agent_runs`` (as the ops role; not on a read-only profile),
to the state directory's ``status.json`` (written atomically, so ``agent status`` works while
the database is down), to the log (one line on stderr) and to each hook's ``job_finished``.

``stop()`` (SIGTERM/SIGINT in ``run_forever``) stops scheduling; running jobs may finish
within ``stop_grace_s``, then are cancelled (outcome ``cancelled``); hooks are closed.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import psycopg

from studyhub.agent.config import AgentConfig, due_now
from studyhub.agent.events import AgentHooks, JobOutcome
from studyhub.agent.jobs import APPLICATION_NAME, NO_DATABASE, Kind, error_line
from studyhub.agent.scheduler import JobRun, Slot, Slots, utcnow
from studyhub.atomic_file import write_json_atomically
from studyhub.audit import write_audit
from studyhub.ops import activity, agent_records
from studyhub.profiles import Profile, resolve_profile

log = logging.getLogger("studyhub.agent")

STATUS_FILE = "status.json"
PENDING_MAX = 1000  # finished runs kept for the database while a profile is unreachable


def iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


class StatusFile:
    """``status.json`` in the state directory: the agent, each profile's link and each job's
    schedule, next due time and last run. Written whole and atomically on every change."""

    def __init__(self, state_dir: Path, agent: str, started_at: datetime) -> None:
        self.path = state_dir / STATUS_FILE
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"agent": agent, "host": socket.gethostname(),
                                     "pid": os.getpid(), "started_at": iso(started_at),
                                     "stopped_at": None, "written_at": None, "profiles": {}}

    def profile(self, name: str) -> dict[str, Any]:
        return self.data["profiles"].setdefault(
            name, {"state": "starting", "error": None, "heartbeat_at": None, "jobs": {}})

    def update(self, profile: str, job: str | None = None, **fields: Any) -> None:
        with self._lock:
            target = self.profile(profile)
            if job is not None:
                target = target["jobs"].setdefault(job, {})
            target.update(fields)
            self._write()

    def finish(self) -> None:
        with self._lock:
            self.data["stopped_at"] = iso(utcnow())
            self._write()

    def _write(self) -> None:
        self.data["written_at"] = iso(utcnow())
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_json_atomically(self.path, self.data, overwrite=True)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, error_line(exc))


class ProfileLoop:
    """One watched profile: its link (up/down with backoff), heartbeat, schedule and runs."""

    def __init__(self, agent: "Agent", target: str | Profile) -> None:
        self.agent = agent
        self.target = target
        self.name = target if isinstance(target, str) else target.name
        self.profile: Profile | None = None if isinstance(target, str) else target
        self.state = "starting"
        self.error: str | None = None
        self.conn: psycopg.Connection | None = None
        self._db = threading.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._beat_due = 0.0
        self.pending: collections.deque[agent_records.AgentRunRecord] = \
            collections.deque(maxlen=PENDING_MAX)
        self.slots = Slots(agent.config.jobs, utcnow())
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"agent-{self.name}")

    # ------------------------------------------------------------------ the link
    def connect(self) -> bool:
        """Try once; on failure schedule the next try (exponential backoff, capped)."""
        try:
            if self.profile is None:
                self.profile = resolve_profile(self.name)
            conn = activity.monitor_connection(self.profile, role="ops",
                                               application_name=APPLICATION_NAME)
        except Exception as exc:  # noqa: BLE001 - any failure: down, retried
            self._down(error_line(exc))
            return False
        with self._db:
            self.conn = conn
        was = self.state
        self.state, self.error, self._backoff = "up", None, 0.0
        if was != "up":
            log.info("%s: connected", self.name)
        self.agent.status.update(self.name, state="up", error=None)
        self._flush()
        self.beat()
        return True

    def _down(self, error: str) -> None:
        with self._db:
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self.conn = None
        self._backoff = min(max(1.0, self._backoff * 2), self.agent.config.reconnect_max_s)
        self._retry_at = time.monotonic() + self._backoff
        self.state, self.error = "down", error
        log.warning("%s: unreachable (retry in %g s): %s", self.name, self._backoff, error)
        self.agent.status.update(self.name, state="down", error=error)

    def beat(self) -> None:
        self._beat_due = time.monotonic() + self.agent.config.heartbeat_every_s
        assert self.profile is not None
        try:
            with self._db:
                if self.conn is None:
                    return
                if self.profile.read_only:  # no writes: only tell that it answers
                    self.conn.execute("SELECT 1")
                else:
                    agent_records.record_heartbeat(
                        self.conn, agent=self.agent.name, profile=self.name,
                        host=socket.gethostname(), pid=os.getpid(),
                        started_at=self.agent.started_at)
        except Exception as exc:  # noqa: BLE001
            self._down(error_line(exc))
            return
        self.agent.status.update(self.name, heartbeat_at=iso(utcnow()))

    def record(self, run: agent_records.AgentRunRecord) -> None:
        """Into ops.agent_runs now, or later when the profile is back."""
        if self.profile is not None and self.profile.read_only:
            return
        with self._db:
            self.pending.append(run)
        if self.state == "up":
            self._flush()

    def _flush(self) -> None:
        try:
            with self._db:
                while self.pending and self.conn is not None:
                    agent_records.record_run(self.conn, self.pending[0])
                    self.pending.popleft()
        except Exception as exc:  # noqa: BLE001
            self._down(error_line(exc))

    def close(self) -> None:
        with self._db:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    # ------------------------------------------------------------------ the schedule
    def start_slot(self, slot: Slot) -> JobRun | None:
        if self.state != "up" and slot.job.kind not in NO_DATABASE:
            now = utcnow()
            self.agent.finished(self, JobOutcome(
                self.agent.name, self.name, slot.name, slot.job.kind, "failed", now, 0.0, None,
                f"not run: profile {self.name} is unreachable ({self.error})"),
                f"not run: profile {self.name} is unreachable ({self.error})")
            return None
        assert self.profile is not None
        slot.run = JobRun(agent=self.agent.name, profile=self.profile, slot_name=slot.name,
                          job=slot.job, config=self.agent.config,
                          on_done=lambda o, d: self.agent.finished(self, o, d),
                          kinds=self.agent.kinds).start()
        self.agent.status.update(self.name, slot.name, running_since=iso(slot.run.started_at),
                                 next_due=iso(slot.next_due))
        return slot.run

    def miss(self, slot: Slot) -> None:
        assert slot.run is not None
        detail = (f"due while the run started {iso(slot.run.started_at)} still runs; "
                  f"skipped (next {iso(slot.next_due)})")
        self.agent.finished(self, JobOutcome(self.agent.name, self.name, slot.name,
                                             slot.job.kind, "missed", utcnow(), 0.0, None,
                                             detail), detail)

    def _run(self) -> None:
        stopping = self.agent.stopping
        self.agent.status.update(self.name, state="starting", jobs=self.agent.describe_jobs(
            self.slots))
        while not stopping.is_set():
            mono = time.monotonic()
            if self.state != "up" and mono >= self._retry_at:
                self.connect()
            elif self.state == "up" and mono >= self._beat_due:
                self.beat()
            now = utcnow()
            start, missed = self.slots.due(now)
            for slot in missed:
                self.miss(slot)
            for slot in start:
                self.start_slot(slot)
            waits = [1.0, self._beat_due - time.monotonic()]
            if self.state != "up":
                waits.append(self._retry_at - time.monotonic())
            wake = self.slots.next_wake()
            if wake is not None:
                waits.append((wake - utcnow()).total_seconds())
            stopping.wait(max(0.05, min(waits)))

    def running(self) -> list[JobRun]:
        return [s.run for s in self.slots.slots.values() if s.run is not None and s.run.alive]


class Agent:
    """``studyhub agent``: watches ``profiles`` (names, resolved when first connected, or
    resolved ``Profile`` objects; default ``config.profiles``) with ``config``'s jobs, keeps
    ``status.json`` in ``state_dir`` (default ``config.state_path()``) and hands every run to
    ``hooks`` (default ``hooks.build_hooks(config, state_dir)``). ``kinds`` replaces job kinds
    (tests)."""

    def __init__(self, config: AgentConfig, profiles: Sequence[str | Profile] | None = None,
                 state_dir: Path | None = None, hooks: Sequence[AgentHooks] | None = None, *,
                 kinds: dict[str, Kind] | None = None) -> None:
        self.config = config
        self.name = config.name
        self.state_dir = Path(state_dir) if state_dir is not None else config.state_path()
        self.started_at = utcnow()
        self.stopping = threading.Event()
        self.status = StatusFile(self.state_dir, self.name, self.started_at)
        if hooks is None:
            from studyhub.agent.hooks import build_hooks

            hooks = build_hooks(config, self.state_dir)
        self.hooks = list(hooks)
        self.kinds = kinds
        targets = list(profiles) if profiles else list(config.profiles)
        by_name = {t if isinstance(t, str) else t.name: t for t in targets}  # once each
        self.loops = [ProfileLoop(self, t) for t in by_name.values()]

    def describe_jobs(self, slots: Slots) -> dict[str, dict[str, Any]]:
        return {s.name: {"kind": s.job.kind, "schedule": s.job.schedule,
                         "every_s": s.job.every_s, "timeout_s": s.job.effective_timeout_s,
                         "next_due": iso(s.next_due), "running_since": None, "last": None}
                for s in slots.slots.values()}

    # ------------------------------------------------------------------ a run ended
    def finished(self, loop: ProfileLoop, outcome: JobOutcome, detail: str) -> None:
        finished_at = utcnow()
        line = (f"{outcome.profile}/{outcome.job} {outcome.outcome} in "
                f"{outcome.duration_s:.1f} s" + (f": {detail}" if detail else ""))
        (log.info if outcome.outcome == "ok" else log.warning)(line)
        if outcome.outcome in ("timeout", "cancelled") and self.config.jobs[outcome.job].writes:
            # the ops function's own line says "interrupted" unless it had to be killed
            write_audit(f"agent.{outcome.kind}", outcome.profile, actor=f"agent {self.name}",
                        job=outcome.job, outcome=outcome.outcome)
        loop.record(agent_records.AgentRunRecord(
            agent=self.name, profile=outcome.profile, job=outcome.job,
            started_at=outcome.started_at, finished_at=finished_at,
            duration_s=outcome.duration_s, outcome=outcome.outcome, detail=detail or None))
        slot = loop.slots.slots.get(outcome.job)
        fields: dict[str, Any] = {"last": {
            "outcome": outcome.outcome, "started_at": iso(outcome.started_at),
            "finished_at": iso(finished_at), "duration_s": round(outcome.duration_s, 3),
            "detail": detail or None}}
        if outcome.outcome != "missed":
            fields["running_since"] = None
        if slot is not None:
            fields["next_due"] = iso(slot.next_due)
        self.status.update(outcome.profile, outcome.job, **fields)
        for hook in self.hooks:
            try:
                hook.job_finished(outcome)
            except Exception as exc:  # noqa: BLE001 - a hook's failure is logged, not fatal
                log.warning("hook %s failed: %s", type(hook).__name__, error_line(exc))

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop scheduling (safe from a signal handler); ``run_forever`` then shuts down."""
        self.stopping.set()

    def run_forever(self, *, install_signals: bool = True) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT, when called in the main thread)."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda _s, _f: self.stop())
        log.info("agent %s started: profiles %s; jobs %s", self.name,
                 ", ".join(lp.name for lp in self.loops), ", ".join(self.config.jobs))
        for lp in self.loops:
            lp.thread.start()
        while not self.stopping.wait(0.5):
            pass
        self._shutdown()

    def _shutdown(self) -> None:
        log.info("agent %s stopping: running jobs get %g s", self.name, self.config.stop_grace_s)
        for lp in self.loops:
            lp.thread.join(5)
        runs = [r for lp in self.loops for r in lp.running()]
        grace_end = time.monotonic() + self.config.stop_grace_s
        for run in runs:
            run.join(max(0.0, grace_end - time.monotonic()))
        for run in runs:
            if run.alive:
                run.cancel()
        for run in runs:
            run.join(60)
        self._close()
        log.info("agent %s stopped", self.name)

    def _close(self) -> None:
        for hook in self.hooks:
            try:
                hook.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("hook %s failed to close: %s", type(hook).__name__, error_line(exc))
        for lp in self.loops:
            if lp.state == "up":
                lp._flush()
            lp.close()
        self.status.finish()

    def run_once(self, only: Sequence[str] | None = None) -> list[JobOutcome]:
        """Each profile once: connect and beat, run every job due now (``config.due_now``) —
        or the jobs named in ``only`` — wait for them (each within its timeout), record them,
        close. For cron lines, containers and tests."""
        if only:
            unknown = [n for n in only if n not in self.config.jobs]
            if unknown:
                from studyhub.errors import ConfigError

                raise ConfigError(f"unknown job(s) {', '.join(unknown)}; configured: "
                                  + ", ".join(self.config.jobs))
        outcomes: list[JobOutcome] = []
        collect = threading.Lock()

        class Collect:
            def job_finished(self, outcome: JobOutcome) -> None:
                with collect:
                    outcomes.append(outcome)

            def close(self) -> None:
                pass

        self.hooks.append(Collect())
        now = utcnow()
        runs: list[JobRun] = []
        for lp in self.loops:
            self.status.update(lp.name, jobs=self.describe_jobs(lp.slots))
            lp.connect()
            for slot in lp.slots.slots.values():
                if (slot.name in only) if only else due_now(slot.job, now):
                    run = lp.start_slot(slot)
                    if run is not None:
                        runs.append(run)
        for run in runs:
            run.join(run.job.effective_timeout_s + 60)
        self._close()
        return outcomes
