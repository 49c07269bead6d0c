"""The doctor's registry: ``Check`` and ``DoctorReport`` (what every renderer shows), the
``CheckContext`` a check reads from, ``@check`` (registers a check under its name, in the order
the modules are imported) and the small helpers checks share (grading, formatting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg.rows import dict_row

from studyhub.ops import activity
from studyhub.ops.queries import load
from studyhub.profiles import Profile

STATUSES = ("ok", "warn", "critical")
EXIT_CODES = {"ok": 0, "warn": 1, "critical": 2}


@dataclass
class Check:
    name: str
    title: str
    status: str  # ok | warn | critical
    value: Any
    threshold: str
    fix: str | None = None
    detail: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DoctorReport:
    profile: str
    database: str
    status: str
    exit_code: int
    checks: list[Check]


@dataclass
class CheckContext:
    conn: psycopg.Connection
    profile: Profile | None
    thresholds: dict[str, float]
    _sessions: list[activity.Session] | None = None

    def t(self, key: str) -> float:
        return self.thresholds[key]

    @property
    def sessions(self) -> list[activity.Session]:
        if self._sessions is None:
            self._sessions = activity.sessions(self.conn)
        return self._sessions

    def rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(load(name), params).fetchall()


CheckFn = Callable[[CheckContext], Check]
REGISTRY: dict[str, CheckFn] = {}
# Checks that read other roles' sessions or statements: without pg_read_all_stats (pg_monitor)
# pg_stat_activity hides their state and query, pg_stat_statements their text and
# pg_stat_replication the positions, so these would report "ok" when they cannot know.
NEEDS_ALL_STATS: set[str] = set()


def check(name: str, *, needs_all_stats: bool = False) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        if needs_all_stats:
            NEEDS_ALL_STATS.add(name)
        return fn
    return register


def grade(value: float, warn: float, critical: float, *, higher_is_worse: bool = True) -> str:
    if higher_is_worse:
        return "critical" if value >= critical else "warn" if value >= warn else "ok"
    return "critical" if value <= critical else "warn" if value <= warn else "ok"


def worst(statuses: list[str]) -> str:
    return max(statuses, key=STATUSES.index, default="ok")


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _join_fixes(statements: list[str], shown: int = 3) -> str:
    head = " ".join(statements[:shown])
    if len(statements) > shown:
        head += f" … and {len(statements) - shown} more (see `studyhub diag indexes`)"
    return head


def _clients(ctx: CheckContext) -> list[activity.Session]:
    return [s for s in ctx.sessions if s.backend_type == "client backend" and not s.is_self]
