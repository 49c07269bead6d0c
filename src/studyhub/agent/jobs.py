"""The agent's job kinds, each one ops call (or two) on one profile:

==============  =========================================  ==============================
kind            ops call                                   as
==============  =========================================  ==============================
doctor          ``health.run_doctor`` → DoctorReport       ops role (pg_monitor)
sample          ``history.take_sample`` → SampleResult      ops role
prune_history   ``history.prune_history`` → PruneResult     ops role
capture         statement + size snapshots (``capture``)   ops role; skipped if read-only
backup          ``backup.create_backup`` → BackupResult     what ``backup create`` uses
prune           ``backup.prune_plan`` + ``apply_prune``    no database (the target only)
basebackup      ``cluster.apply_plan(basebackup_plan)``    what ``cluster basebackup`` uses
drill           ``backup.drill_backup`` → DrillResult       what ``backup drill`` uses
==============  =========================================  ==============================

The reading kinds run in a worker thread on connections from ``JobContext.connect`` (each
with ``statement_timeout`` set to what is left of the job's timeout; the scheduler cancels
them with ``conn.cancel_safe()`` when the timeout passes, so a transaction in flight rolls
back). The writing kinds (backup, prune, basebackup, drill) run in a child process that is
interrupted (SIGINT: the ops function's audit line says ``interrupted`` and its partial output
is removed) and then killed; their audit lines name the agent (``audit.acting_as``).

A kind returns ``(result, detail)``; it raises ``JobFailed`` for a run that ended with a result
but did not succeed (a drill whose tables differ)."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg

from studyhub.agent.config import AgentConfig, JobConfig
from studyhub.connect import first_line
from studyhub.errors import StudyhubError
from studyhub.humanize import human_bytes
from studyhub.ops import activity, backup, capture, cluster, health, history
from studyhub.profiles import Profile, backup_config

APPLICATION_NAME = "studyhub-agent"


class JobFailed(Exception):
    """The job ran and has a result, but did not succeed; ``detail`` is one safe line."""

    def __init__(self, detail: str, result: object | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.result = result


class JobCancelled(Exception):
    """The job's context was cancelled (timeout or shutdown) before it asked for a connection."""


def error_line(exc: BaseException) -> str:
    """One line about a failure that carries no secret: our own errors' first line (written to
    carry names and counts), an OSError's first line (paths), otherwise the type (a driver's
    message may quote values) with the SQLSTATE when there is one."""
    if isinstance(exc, JobFailed):
        return exc.detail[:300]
    if isinstance(exc, (StudyhubError, OSError)):
        return first_line(exc)[:300]
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    return type(exc).__name__


@dataclass
class JobContext:
    """What a running job may use: its profile, its configuration, connections that the
    scheduler can cancel, and the deadline (``time.monotonic()``)."""

    agent: str
    profile: Profile
    name: str
    job: JobConfig
    config: AgentConfig
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    _conns: list[psycopg.Connection] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, role: str = "ops") -> psycopg.Connection:
        """An autocommit connection as ``role`` whose statements end by the job's deadline
        (``statement_timeout``); closed, and cancellable, by the scheduler."""
        if self.cancelled.is_set():
            raise JobCancelled("cancelled")
        conn = activity.monitor_connection(self.profile, role=role,
                                           application_name=APPLICATION_NAME)
        left_ms = max(1, int((self.deadline - time.monotonic()) * 1000))
        conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{left_ms}ms"])
        with self._lock:
            self._conns.append(conn)
            if self.cancelled.is_set():  # cancelled while connecting
                conn.cancel_safe()
        return conn

    def cancel(self) -> None:
        """Cancel what every connection of the job is running (a transaction in flight rolls
        back); the job's thread then ends with an error."""
        self.cancelled.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.cancel_safe(timeout=5)
            except Exception:  # noqa: BLE001 - closed already or unreachable: nothing to cancel
                pass

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


Kind = Callable[[JobContext], "tuple[Any, str]"]


# ------------------------------------------------------------------ reading kinds (threads)
def run_doctor(ctx: JobContext) -> tuple[Any, str]:
    report = health.run_doctor(ctx.connect("ops"), ctx.profile)
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in ("warn", "critical")}
    return report, (f"{report.status}: {len(report.checks)} checks, {counts['warn']} warn, "
                    f"{counts['critical']} critical")


def run_sample(ctx: JobContext) -> tuple[Any, str]:
    r = history.take_sample(ctx.connect("ops"))
    return r, f"{r.sessions} sessions, {r.waiting} waiting, {r.blocked_chains} blocked chain(s)"


def run_prune_history(ctx: JobContext) -> tuple[Any, str]:
    r = history.prune_history(ctx.connect("ops"), ctx.config.history)
    counts = {k: v for k, v in dataclasses.asdict(r).items() if isinstance(v, (int, float))}
    return r, ", ".join(f"{k} {v}" for k, v in counts.items()) or "pruned"


def run_capture(ctx: JobContext) -> tuple[Any, str]:
    """Statement and size snapshots (``ops.capture``); a read-only profile is not connected to."""
    result = capture.capture_snapshots(
        ctx.profile, None if ctx.profile.read_only else ctx.connect("ops"))
    return result, "; ".join(result.notes) or "statements and sizes stored"


# ----------------------------------------------------------- writing kinds (child process)
def run_backup(ctx: JobContext) -> tuple[Any, str]:
    r = backup.create_backup(ctx.profile, target=ctx.job.target, jobs=ctx.job.parallel,
                             set_format=ctx.job.format)
    return r, (f"{r.name} in {r.target or r.path}: {r.tables} tables, {r.rows} rows, "
               f"{human_bytes(r.bytes)}")


def run_prune(ctx: JobContext) -> tuple[Any, str]:
    plan = backup.prune_plan(None, ctx.job.keep_daily, ctx.job.keep_weekly,
                             ctx.job.keep_monthly, target=ctx.job.target,
                             config=backup_config(ctx.profile.name))
    deleted = backup.apply_prune(plan)
    return plan, f"deleted {len(deleted)} set(s), kept {len(plan.decisions) - len(deleted)}"


def run_basebackup(ctx: JobContext) -> tuple[Any, str]:
    backend = cluster.backend_for(ctx.profile)
    b = cluster.apply_plan(backend, backend.basebackup_plan(ctx.job.keep))
    return b, f"base backup {b.label}: {human_bytes(b.size_bytes)}"


def run_drill(ctx: JobContext) -> tuple[Any, str]:
    r = backup.drill_backup(ctx.profile, ctx.job.target, jobs=ctx.job.parallel)
    if not r.ok:
        raise JobFailed(f"drill failed: {r.problems[0] if r.problems else 'see the result'}", r)
    return r, f"{r.set_name}: {r.tables} tables, {r.rows} rows restored and match"


KINDS: dict[str, Kind] = {
    "doctor": run_doctor,
    "sample": run_sample,
    "prune_history": run_prune_history,
    "capture": run_capture,
    "backup": run_backup,
    "prune": run_prune,
    "basebackup": run_basebackup,
    "drill": run_drill,
}
# kinds that need no database connection (run even while the profile is unreachable)
NO_DATABASE = frozenset({"prune"})
