"""What the agent hands its hooks: one ``JobOutcome`` per finished run (also ``missed``,
``timeout`` and ``cancelled`` ones), and the ``AgentHooks`` protocol the alert and metrics hooks
implement. The runtime calls ``job_finished`` from its own threads (a hook must not block: hand
the work to a thread of its own) and ``close`` once at shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

OUTCOMES = ("ok", "failed", "timeout", "cancelled", "missed")


@dataclass(frozen=True)
class JobOutcome:
    agent: str
    profile: str
    job: str  # the configured job name (e.g. "doctor", "backup")
    kind: str  # doctor | sample | prune_history | capture | backup | prune | basebackup | drill
    outcome: str  # ok | failed | timeout | cancelled | missed
    started_at: datetime  # aware UTC
    duration_s: float
    result: object | None  # the ops function's typed result (DoctorReport, SampleResult, ...)
    error: str | None  # one line, never a secret


class AgentHooks(Protocol):
    def job_finished(self, outcome: JobOutcome) -> None: ...

    def close(self) -> None: ...
