"""When each job of one profile is due, and one run of one job under its timeout.

``Slots`` holds a profile's jobs and their next due times (cron via croniter, or every
``every_s`` from the start without drift). ``Slots.due(now)`` returns the jobs to start and
the jobs that are due while their previous run still runs: those are ``missed`` (recorded and
logged by the runtime), never stacked — one job has at most one run at a time, and a run that
timed out still holds its slot until its work has really stopped.

``JobRun`` is one run: the reading kinds in a worker thread (cancelled through their
connections: ``JobContext.cancel``), the writing kinds in a child process of their own
(interrupted with SIGTERM — the ops function's audit line then says ``interrupted`` and its
partial output is removed — and killed ``kill_after_s`` later). It ends as ``ok``, ``failed``,
``timeout`` (over ``timeout_s``) or ``cancelled`` (the agent is stopping) and hands a
``JobOutcome`` and a one-line detail (also for an ``ok`` run) to ``on_done``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from studyhub.agent.config import AgentConfig, JobConfig, next_run
from studyhub.agent.events import JobOutcome
from studyhub.agent.jobs import KINDS, JobContext, Kind, error_line
from studyhub.audit import acting_as
from studyhub.profiles import Profile

log = logging.getLogger("studyhub.agent")

KILL_AFTER_S = 30.0  # a child that ignores its interruption this long is killed


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Slot:
    name: str
    job: JobConfig
    next_due: datetime
    run: "JobRun | None" = None

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.alive


class Slots:
    """The enabled jobs of one profile and when each is next due."""

    def __init__(self, jobs: dict[str, JobConfig], start: datetime) -> None:
        self.slots = {
            name: Slot(name, job, start if job.every_s is not None else next_run(job, start))
            for name, job in jobs.items() if job.enabled
        }

    def due(self, now: datetime) -> tuple[list[Slot], list[Slot]]:
        """(slots to start now, slots due while their previous run still runs: missed). Each
        due slot's next time moves past ``now``: runs missed meanwhile are not made up."""
        start, missed = [], []
        for slot in self.slots.values():
            if now < slot.next_due:
                continue
            (missed if slot.running else start).append(slot)
            slot.next_due = self._after(slot, now)
        return start, missed

    @staticmethod
    def _after(slot: Slot, now: datetime) -> datetime:
        job = slot.job
        if job.every_s is not None:
            behind = (now - slot.next_due).total_seconds()
            return slot.next_due + timedelta(seconds=job.every_s * (int(behind // job.every_s) + 1))
        return next_run(job, now)

    def next_wake(self) -> datetime | None:
        return min((s.next_due for s in self.slots.values()), default=None)


def _child_main(pipe: Any, kind: str, ctx_args: dict[str, Any], actor: str) -> None:
    """A writing job in its own process: SIGTERM interrupts it (KeyboardInterrupt, so the ops
    function audits ``interrupted`` and removes its partial output); a terminal's Ctrl-C is
    the agent's to handle (own session)."""
    os.setsid()

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    ctx = JobContext(**ctx_args)
    try:
        with acting_as(actor):
            result, detail = KINDS[kind](ctx)
        message: tuple[str, Any, str] = ("ok", result, detail)
    except KeyboardInterrupt:
        return
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        message = ("failed", getattr(exc, "result", None), error_line(exc))
    finally:
        ctx.close()
    try:
        pipe.send(message)
    except Exception:  # noqa: BLE001 - a result that cannot be pickled: the line is enough
        pipe.send((message[0], None, message[2]))


class JobRun:
    """One run of one job of one profile (see the module docstring)."""

    def __init__(self, *, agent: str, profile: Profile, slot_name: str, job: JobConfig,
                 config: AgentConfig, on_done: Callable[[JobOutcome, str], None],
                 kinds: dict[str, Kind] | None = None,
                 kill_after_s: float = KILL_AFTER_S) -> None:
        self.agent, self.profile, self.name, self.job = agent, profile, slot_name, job
        self.config, self.on_done = config, on_done
        self.overrides = kinds or {}  # tests: these kinds run in a thread, in this process
        self.kill_after_s = kill_after_s
        self.started_at = utcnow()
        self._t0 = time.monotonic()
        self.deadline = self._t0 + job.effective_timeout_s
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"agent-{profile.name}-{slot_name}")
        self.outcome: JobOutcome | None = None

    @property
    def actor(self) -> str:
        return f"agent {self.agent}"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "JobRun":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop the run now (the agent is stopping): its outcome is ``cancelled``."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _ctx_args(self) -> dict[str, Any]:
        return {"agent": self.agent, "profile": self.profile, "name": self.name,
                "job": self.job, "config": self.config, "deadline": self.deadline}

    def _wait(self, finished: Callable[[float], bool]) -> str | None:
        """Wait until ``finished(poll_s)`` says so, the deadline passes ("timeout") or the run
        is cancelled ("cancelled")."""
        while True:
            left = self.deadline - time.monotonic()
            if finished(max(0.0, min(0.1, left))):
                return None
            if self._cancel.is_set():
                return "cancelled"
            if time.monotonic() >= self.deadline:
                return "timeout"

    def _supervise(self) -> None:
        kind = self.job.kind
        try:
            if self.job.writes and kind not in self.overrides:
                status, result, detail, stopped = self._in_child(kind)
            else:
                status, result, detail, stopped = self._in_thread(kind)
        except BaseException as exc:  # noqa: BLE001 - the supervisor itself failed
            status, result, detail, stopped = "failed", None, error_line(exc), None
        if stopped is not None:
            status = stopped
            detail = (f"over its timeout of {self.job.effective_timeout_s:g} s; cancelled"
                      if stopped == "timeout" else "cancelled: the agent is stopping")
        duration = time.monotonic() - self._t0
        self.outcome = JobOutcome(
            agent=self.agent, profile=self.profile.name, job=self.name, kind=kind,
            outcome=status, started_at=self.started_at, duration_s=duration, result=result,
            error=None if status == "ok" else detail)
        self.on_done(self.outcome, detail)
        if self._worker is not None:  # a timed-out worker still holds the slot until it ends
            self._worker.join()

    _worker: threading.Thread | None = None

    def _in_thread(self, kind: str) -> tuple[str, Any, str, str | None]:
        ctx = JobContext(**self._ctx_args())
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                with acting_as(self.actor):
                    box["ok"] = self.overrides.get(kind, KINDS[kind])(ctx)
            except BaseException as exc:  # noqa: BLE001 - reported as the run's outcome
                box["exc"] = exc
            finally:
                ctx.close()

        worker = threading.Thread(target=work, daemon=True, name=f"{self._thread.name}-work")
        worker.start()
        stopped = self._wait(lambda poll: (worker.join(poll), not worker.is_alive())[1])
        if stopped is not None:
            ctx.cancel()
            worker.join(10)
            if worker.is_alive():
                log.warning("%s/%s: still running after cancel; its slot stays busy",
                            self.profile.name, self.name)
                self._worker = worker
            return "failed", None, "", stopped
        if "ok" in box:
            result, detail = box["ok"]
            return "ok", result, detail, None
        exc = box["exc"]
        if time.monotonic() >= self.deadline - 0.05:  # the server's statement_timeout fired
            return "failed", None, "", "timeout"
        return "failed", getattr(exc, "result", None), error_line(exc), None

    def _in_child(self, kind: str) -> tuple[str, Any, str, str | None]:
        mp = multiprocessing.get_context("spawn")
        receive, send = mp.Pipe(duplex=False)
        proc = mp.Process(target=_child_main, args=(send, kind, self._ctx_args(), self.actor),
                          name=f"studyhub-agent-{kind}")
        proc.start()
        send.close()
        box: dict[str, Any] = {}

        def finished(poll: float) -> bool:
            try:
                if receive.poll(poll):
                    box["msg"] = receive.recv()
                    return True
            except EOFError:  # the child ended without a word
                return True
            return not proc.is_alive() and not receive.poll(0)

        stopped = self._wait(finished)
        if stopped is not None:
            proc.terminate()  # SIGTERM: KeyboardInterrupt in the child
            proc.join(self.kill_after_s)
            if proc.is_alive():
                proc.kill()
        proc.join()
        receive.close()
        if stopped is not None:
            return "failed", None, "", stopped
        if "msg" not in box:
            return "failed", None, f"the job's process ended with exit code {proc.exitcode}", None
        status, result, detail = box["msg"]
        return status, result, detail, None
