"""The incident history (stub: the agent's ``sample`` and ``prune_history`` jobs call these;
the history package's own version replaces this file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg

from studyhub.ops.history.settings import HistorySettings

__all__ = ["HistorySettings", "PruneResult", "SampleResult", "prune_history", "take_sample"]


@dataclass
class SampleResult:
    taken_at: datetime
    sessions: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    longest_transaction_s: float | None = None
    blocked_chains: int = 0


@dataclass
class PruneResult:
    deleted: int = 0


def take_sample(conn: psycopg.Connection, *, now: datetime | None = None) -> SampleResult:
    return SampleResult(now or datetime.now(timezone.utc))


def prune_history(conn: psycopg.Connection, settings: HistorySettings, *,
                  now: datetime | None = None) -> PruneResult:
    return PruneResult()
