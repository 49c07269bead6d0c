"""Checks on backups: the age of this database's newest complete backup set in every target
of the profile (``backup_age``, one item per target), of its last successful restore drill, read
from ``ops.backup_drills`` (``restore_drill``; a failed last drill warns too), and continuous WAL
archiving (``wal_archive``: failing archive_command, segments waiting, and for the local cluster
the free space of its archive's file system).

``backup_age_check`` needs no connection (the sets are files), so the dashboard's backups page
uses it while the database is down; ``restore_drill_check`` reads as the ops role (SELECT on
``ops.backup_drills``, granted by its migration).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from studyhub.humanize import human_s
from studyhub.local import LocalHome
from studyhub.ops import backup
from studyhub.ops.health.registry import Check, CheckContext, _fmt_s, check, grade, worst
from studyhub.profiles import Profile

BACKUP_TITLE = "Age of the newest backup set"
DRILL_TITLE = "Last successful restore drill"
ARCHIVE_TITLE = "WAL archiving"


def fmt_age(seconds: float | None) -> str:
    """"42min", "3.5h", "9.2d"."""
    if seconds is not None and seconds >= 48 * 3600:
        return f"{seconds / 86400:.1f}d"
    return human_s(seconds)


def _age_s(when: datetime | None, now: datetime) -> float | None:
    return None if when is None else (now - when).total_seconds()


def backup_age_check(profile: Profile | None, database: str,
                     limits: dict[str, float]) -> Check:
    """The newest complete set of ``profile``/``database`` in each of the profile's targets,
    graded by its age; a target without one warns."""
    warn_h, crit_h = limits["backup_age.warn_h"], limits["backup_age.critical_h"]
    threshold = f"warn ≥{warn_h:g}h, critical ≥{crit_h:g}h; no set: warn"
    if profile is None:
        return Check("backup_age", BACKUP_TITLE, "ok", "n/a", threshold,
                     detail="sets are named by profile: run the doctor for a profile")
    now = datetime.now(timezone.utc)
    items: list[dict[str, Any]] = []
    for target in backup.backup_targets(profile):
        try:
            info = backup.newest_set(target, profile.name, database)
        except (OSError, backup.BackupError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            items.append({"target": target.url, "set": None, "created_at": None,
                          "age_s": None, "status": "warn", "problem": f"cannot list: {why}"})
            continue
        when = backup.set_time(info) if info else None
        age = _age_s(when, now)
        items.append({"target": target.url, "set": info.name if info else None,
                      "created_at": when.isoformat(timespec="seconds") if when else None,
                      "age_s": None if age is None else round(age, 1),
                      "status": "warn" if age is None else grade(age / 3600, warn_h, crit_h),
                      "problem": None if info else "no complete set"})
    status = worst([i["status"] for i in items])
    value = "; ".join(
        f"{fmt_age(i['age_s'])} ({i['set']})" if i["set"] else f"none in {i['target']}"
        for i in items)
    fix = None
    if status != "ok":
        fix = (f"make one: studyhub backup create -p {profile.name}; and check the schedule "
               "that should run it ([agent.jobs.backup] in studyhub.toml, `studyhub agent "
               "status`, or a cron line)")
    return Check("backup_age", BACKUP_TITLE, status, value, threshold, fix=fix,
                 detail=None if status == "ok" else
                 "a database without a recent complete backup set cannot be restored to a "
                 "recent state", items=items)


def _drill_item(which: str, d: backup.DrillRecord, now: datetime) -> dict[str, Any]:
    return {"which": which, "drilled_at": d.drilled_at.isoformat(timespec="seconds"),
            "age_s": round(_age_s(d.drilled_at, now) or 0, 1), "ok": d.ok, "set": d.set_name,
            "target": d.target, "duration_s": d.duration_s, "tables": d.tables, "rows": d.rows,
            "problem": d.problems[0] if d.problems else None}


def restore_drill_check(conn: psycopg.Connection, profile: Profile | None, database: str,
                        limits: dict[str, float]) -> Check:
    """The age of the last successful drill of ``profile``/``database`` (graded), and a warning
    when the last drill failed or there never was one."""
    warn_d, crit_d = limits["restore_drill.warn_days"], limits["restore_drill.critical_days"]
    threshold = f"warn ≥{warn_d:g}d, critical ≥{crit_d:g}d; last drill failed: warn"
    if profile is None:
        return Check("restore_drill", DRILL_TITLE, "ok", "n/a", threshold,
                     detail="drills are recorded by profile: run the doctor for a profile")
    drill_fix = f"studyhub backup drill -p {profile.name}"
    try:
        last, last_ok = backup.last_drills(conn, profile.name, database)
    except backup.DrillsUnavailable as exc:
        return Check("restore_drill", DRILL_TITLE, "warn", "cannot tell", threshold,
                     fix=exc.fix, detail=str(exc))
    if last is None:
        return Check("restore_drill", DRILL_TITLE, "warn", "never drilled", threshold,
                     fix=drill_fix,
                     detail="only a restore proves a backup is usable: drill it regularly")
    now = datetime.now(timezone.utc)
    statuses = []
    if last_ok is None:
        statuses.append("warn")
        value = "no successful drill"
    else:
        age = _age_s(last_ok.drilled_at, now) or 0
        statuses.append(grade(age / 86400, warn_d, crit_d))
        value = (f"{fmt_age(age)} ago ({last_ok.set_name}, {last_ok.tables} tables in "
                 f"{human_s(last_ok.duration_s)})")
    detail = None
    if not last.ok:
        statuses.append("warn")
        value += f"; last drill FAILED {fmt_age(_age_s(last.drilled_at, now))} ago"
        detail = (f"the last drill ({last.set_name or 'no set'}) failed: "
                  f"{last.problems[0] if last.problems else 'no reason recorded'}")
    status = worst(statuses)
    items = [_drill_item("last", last, now)]
    if last_ok is not None and last_ok.id != last.id:
        items.append(_drill_item("last_ok", last_ok, now))
    if status == "ok":
        fix = None
    elif not last.ok:
        fix = (f"see why it failed (detail); then make a new set (studyhub backup create -p "
               f"{profile.name}) and drill it ({drill_fix})")
    else:
        fix = (f"{drill_fix} (and schedule it weekly: [agent.jobs.drill] in studyhub.toml for "
               "`studyhub agent`, or a cron line)")
    return Check("restore_drill", DRILL_TITLE, status, value, threshold, fix=fix,
                 detail=detail, items=items)


@check("backup_age")
def backup_age(ctx: CheckContext) -> Check:
    return backup_age_check(ctx.profile, ctx.conn.info.dbname, ctx.thresholds)


@check("restore_drill")
def restore_drill(ctx: CheckContext) -> Check:
    return restore_drill_check(ctx.conn, ctx.profile, ctx.conn.info.dbname, ctx.thresholds)


@dataclass
class ArchiveSpace:
    directory: str
    free_bytes: int
    total_bytes: int

    @property
    def free_pct(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 100.0


def local_archive_space(profile: Profile | None) -> ArchiveSpace | None:
    """The file system holding the local cluster's WAL archive (``$STUDYHUB_HOME/wal-archive``,
    where ``studyhub.local`` points archive_command); None for other profiles or without one."""
    if profile is None or not profile.is_local:
        return None
    d: Path = LocalHome().wal_archive_dir
    if not d.is_dir():
        return None
    usage = shutil.disk_usage(d)
    return ArchiveSpace(str(d), usage.free, usage.total)


def wal_archive_check(row: dict[str, Any], space: ArchiveSpace | None, local_base_backups: int,
                      limits: dict[str, float]) -> Check:
    """Judge one ``get_wal_archive_status`` row (and the local archive's free space): the last
    failure newer than the last success is critical (archive_command fails: WAL piles up in
    pg_wal and point-in-time recovery stops at the last archived segment); the oldest segment
    waiting is graded; so is the archive's free space."""
    warn_lag, crit_lag = limits["wal_archive.warn_lag_s"], limits["wal_archive.critical_lag_s"]
    warn_free, crit_free = limits["wal_archive.warn_free_pct"], limits["wal_archive.critical_free_pct"]
    threshold = (f"last attempt failed: critical; oldest segment waiting warn ≥{_fmt_s(warn_lag)}, "
                 f"critical ≥{_fmt_s(crit_lag)}"
                 + (f"; archive free space warn ≤{warn_free:g}%, critical ≤{crit_free:g}%"
                    if space else ""))
    mode = row["archive_mode"]
    if mode == "off" or (row["in_recovery"] and mode != "always"):
        if mode == "off" and local_base_backups:
            return Check("wal_archive", ARCHIVE_TITLE, "warn", "not archiving", threshold,
                         fix="restart the local primary once so it archives: studyhub local "
                         "down && studyhub local up",
                         detail=f"{local_base_backups} base backup(s) rely on the WAL archive "
                         "for point-in-time recovery, but archive_mode is off")
        why = ("archive_mode is off" if mode == "off" else
               "a replica: its primary archives (archive_mode is not 'always')")
        return Check("wal_archive", ARCHIVE_TITLE, "ok", "not archiving", threshold,
                     detail=why)
    statuses = []
    notes = []
    failed_at, archived_at = row["last_failed_time"], row["last_archived_time"]
    failing = failed_at is not None and (archived_at is None or failed_at > archived_at)
    if failing:
        statuses.append("critical")
        notes.append(f"archive_command fails: {row['last_failed_wal']} failed "
                     f"{failed_at.isoformat(timespec='seconds')}"
                     + (f", last success {archived_at.isoformat(timespec='seconds')}"
                        if archived_at else ", never succeeded")
                     + f" ({row['failed_count']} failures since {row['stats_reset']:%Y-%m-%d})")
    ready, lag = row["ready_segments"] or 0, row["oldest_ready_age_s"]
    if ready:
        statuses.append(grade(lag or 0, warn_lag, crit_lag))
    parts = ["FAILING" if failing else "archiving",
             f"{ready} segment(s) waiting" + (f" (oldest {_fmt_s(lag)})" if ready else ""),
             f"last archived {fmt_age(row['last_archived_age_s'])} ago" if archived_at
             else "nothing archived yet"]
    items: list[dict[str, Any]] = [{
        "archive_mode": mode, "archived_count": row["archived_count"],
        "last_archived_wal": row["last_archived_wal"],
        "last_archived_at": archived_at.isoformat(timespec="seconds") if archived_at else None,
        "failed_count": row["failed_count"], "last_failed_wal": row["last_failed_wal"],
        "last_failed_at": failed_at.isoformat(timespec="seconds") if failed_at else None,
        "failing": failing, "ready_segments": ready,
        "oldest_ready_age_s": None if lag is None else round(lag, 1)}]
    if space is not None:
        statuses.append(grade(space.free_pct, warn_free, crit_free, higher_is_worse=False))
        parts.append(f"archive {space.free_pct:.0f}% free")
        items[0].update(archive_dir=space.directory, archive_free_bytes=space.free_bytes,
                        archive_total_bytes=space.total_bytes,
                        archive_free_pct=round(space.free_pct, 1))
        if statuses[-1] != "ok":
            notes.append(f"the file system of {space.directory} is {100 - space.free_pct:.0f}% "
                         "full: once it is full archive_command fails and pg_wal grows")
    status = worst(statuses)
    fix = None
    if failing:
        fix = ("see why archive_command fails in the server log (grep 'archive command failed'); "
               "fix the archive's destination (space, permissions, credentials) — segments "
               "wait in pg_wal and are archived once it succeeds")
    elif status != "ok" and space is not None and statuses[-1] != "ok":
        fix = (f"free space where {space.directory} lives: take a new base backup and drop older "
               "ones with their WAL (studyhub cluster basebackup --keep N)")
    elif status != "ok":
        fix = ("archiving falls behind: check the archive's destination is fast enough, and the "
               "server log for slow or retried archive_command runs")
    return Check("wal_archive", ARCHIVE_TITLE, status, "; ".join(parts), threshold, fix=fix,
                 detail="; ".join(notes) or None, items=items)


@check("wal_archive")
def wal_archive(ctx: CheckContext) -> Check:
    row = ctx.rows("get_wal_archive_status")[0]
    space = local_archive_space(ctx.profile)
    local_backups = (len(LocalHome().read_base_backups())
                     if ctx.profile is not None and ctx.profile.is_local else 0)
    return wal_archive_check(row, space, local_backups, ctx.thresholds)
