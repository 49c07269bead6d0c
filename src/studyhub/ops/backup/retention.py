"""Retention of backup sets: grandfather-father-son over complete sets, per profile and
database, never deleting the newest good set of a database; leftovers of interrupted creations
are removed unless still being written."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from studyhub.audit import audited
from studyhub.ops.backup.setformat import (
    PARTIAL_PREFIX,
    BackupError,
    BackupSetInfo,
    default_backup_dir,
    list_sets,
)

@dataclass
class PruneDecision:
    name: str
    path: str
    status: str
    created_at: str | None
    keep: bool
    reasons: list[str]  # why kept (daily/weekly/monthly/only good backup) or removed
    bytes: int


@dataclass
class PrunePlan:
    backup_dir: str
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    decisions: list[PruneDecision]

    @property
    def to_delete(self) -> list[PruneDecision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def freed_bytes(self) -> int:
        return sum(d.bytes for d in self.to_delete)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(timezone.utc)


def prune_plan(backup_dir: Path | None, keep_daily: int, keep_weekly: int,
               keep_monthly: int) -> PrunePlan:
    """Grandfather-father-son over complete sets, per (profile, database): keep the newest set
    of each of the newest ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly``
    months. The newest complete set of each database is always kept (never delete the only
    good backup). Leftovers of interrupted creations are removed unless still being written."""
    if min(keep_daily, keep_weekly, keep_monthly) < 0:
        raise BackupError("keep counts must be 0 or more")
    root = backup_dir or default_backup_dir()
    sets = list_sets(root)
    decisions: list[PruneDecision] = []
    groups: dict[tuple[str | None, str | None], list[BackupSetInfo]] = {}
    for s in sets:
        if s.status == "complete":
            groups.setdefault((s.profile, s.database), []).append(s)
        else:
            keep = s.status == "in-progress"
            decisions.append(PruneDecision(
                s.name, s.path, s.status, s.created_at, keep,
                ["still being written"] if keep else [f"leftover: {s.problem}"], s.bytes))
    for members in groups.values():
        members.sort(key=lambda s: s.created_at or "", reverse=True)  # newest first
        reasons: dict[str, list[str]] = {s.name: [] for s in members}
        for label, count, key in (
            ("daily", keep_daily, lambda t: t.strftime("%Y-%m-%d")),
            ("weekly", keep_weekly, lambda t: "%d-W%02d" % t.isocalendar()[:2]),
            ("monthly", keep_monthly, lambda t: t.strftime("%Y-%m")),
        ):
            seen: list[str] = []
            for s in members:
                period = key(_parse_time(s.created_at))  # type: ignore[arg-type]
                if period in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.append(period)
                reasons[s.name].append(f"{label} {period}")
        if not any(reasons.values()):
            reasons[members[0].name].append("newest good backup (never delete the only one)")
        for s in members:
            keep = bool(reasons[s.name])
            decisions.append(PruneDecision(
                s.name, s.path, s.status, s.created_at, keep,
                reasons[s.name] or ["outside the retention policy"], s.bytes))
    decisions.sort(key=lambda d: (d.created_at or "", d.name))
    return PrunePlan(str(root), keep_daily, keep_weekly, keep_monthly, decisions)


def apply_prune(plan: PrunePlan) -> list[PruneDecision]:
    """Delete what the plan says (a set is first renamed to a .partial- name, so a deletion
    interrupted half-way never leaves something that looks complete). Audited as
    ``backup.prune`` with the names deleted, also when it fails part-way."""
    done: list[PruneDecision] = []
    deleted: list[str] = []  # the audit line's list, filled as sets go
    with audited("backup.prune", "-", backup_dir=plan.backup_dir, deleted=deleted,
                 keep_daily=plan.keep_daily, keep_weekly=plan.keep_weekly,
                 keep_monthly=plan.keep_monthly):
        for d in plan.to_delete:
            path = Path(d.path)
            if not path.exists():
                continue
            if not path.name.startswith(PARTIAL_PREFIX):
                doomed = path.with_name(f"{PARTIAL_PREFIX}{path.name}-deleting")
                os.rename(path, doomed)
                path = doomed
            shutil.rmtree(path)
            done.append(d)
            deleted.append(d.name)
    return done
