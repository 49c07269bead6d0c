"""STUB (helper C): the interface of helper A's studyhub/agent/events.py, exactly as in the
shared plan; A's version replaces this file at merge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class JobOutcome:
    agent: str
    profile: str
    job: str
    kind: str
    outcome: str
    started_at: datetime
    duration_s: float
    result: object | None
    error: str | None


class AgentHooks(Protocol):
    def job_finished(self, outcome: JobOutcome) -> None: ...

    def close(self) -> None: ...
