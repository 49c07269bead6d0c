"""Retention of backup sets, per target: grandfather-father-son over complete sets, per profile
and database, never deleting the newest good set of a database; leftovers of interrupted
creations are removed unless still being written — in object storage, objects of a set without
a manifest and multipart uploads never completed, once older than the abandon age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from studyhub.audit import audited
from studyhub.ops.backup.setformat import BackupError, BackupSetInfo
from studyhub.ops.backup.store import (
    DEFAULT_ABANDONED_AFTER_H,
    ORPHANED_UPLOADS,
    LocalTarget,
    Target,
    open_target,
)
from studyhub.profiles import BackupConfig

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
    backup_dir: str  # the target: a directory, or s3://BUCKET/PREFIX
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    decisions: list[PruneDecision]
    abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H

    @property
    def to_delete(self) -> list[PruneDecision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def freed_bytes(self) -> int:
        return sum(d.bytes for d in self.to_delete)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(timezone.utc)


def prune_plan(backup_dir: Path | None, keep_daily: int, keep_weekly: int,
               keep_monthly: int, *, target: str | Path | Target | None = None,
               config: BackupConfig | None = None,
               abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H) -> PrunePlan:
    """Grandfather-father-son over complete sets of one target (``backup_dir``, or
    ``target``: a directory or ``s3://BUCKET/PREFIX``; neither: the configured target, else
    the backup directory), per (profile, database): keep the newest set of each of the newest
    ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly`` months. The newest
    complete set of each database is always kept (never delete the only good backup).
    Leftovers of interrupted creations are removed unless still being written (remote: newer
    than ``abandoned_after_h``)."""
    if min(keep_daily, keep_weekly, keep_monthly) < 0 or abandoned_after_h < 0:
        raise BackupError("keep counts and the abandon age must be 0 or more")
    if backup_dir is not None and target is not None:
        raise BackupError("give a directory or a target, not both")
    where = LocalTarget(backup_dir) if backup_dir is not None else open_target(target, config)
    sets = where.list_sets(abandoned_after_h)
    decisions: list[PruneDecision] = []
    groups: dict[tuple[str | None, str | None], list[BackupSetInfo]] = {}
    for s in sets:
        if s.status == "complete":
            groups.setdefault((s.profile, s.database), []).append(s)
        else:
            keep = s.status == "in-progress"
            reason = ("abort the unfinished uploads" if s.status == ORPHANED_UPLOADS
                      else f"leftover: {s.problem}")
            decisions.append(PruneDecision(
                s.name, s.path, s.status, s.created_at, keep,
                ["still being written"] if keep else [reason], s.bytes))
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
    plan = PrunePlan(where.url, keep_daily, keep_weekly, keep_monthly, decisions,
                     abandoned_after_h)
    plan.target = where  # type: ignore[attr-defined]  # not a field: not in --json
    return plan


def apply_prune(plan: PrunePlan) -> list[PruneDecision]:
    """Delete what the plan says: a local set is first renamed to a .partial- name, a remote
    set loses its manifest first, so a deletion interrupted half-way never leaves something
    that looks complete; unfinished multipart uploads are aborted. Audited as
    ``backup.prune`` with the names deleted, also when it fails part-way."""
    target: Target = getattr(plan, "target", None) or LocalTarget(Path(plan.backup_dir))
    done: list[PruneDecision] = []
    deleted: list[str] = []  # the audit line's list, filled as sets go
    with audited("backup.prune", "-", backup_dir=plan.backup_dir, deleted=deleted,
                 keep_daily=plan.keep_daily, keep_weekly=plan.keep_weekly,
                 keep_monthly=plan.keep_monthly):
        for d in plan.to_delete:
            if not target.delete_set(BackupSetInfo(d.name, d.path, d.status, None, None,
                                                   d.created_at, d.bytes)):
                continue
            done.append(d)
            deleted.append(d.name)
    return done
