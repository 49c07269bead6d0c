"""Checks on backups: the age of this database's newest complete backup set in every target
of the profile (``backup_age``), and of its last successful restore drill, read from
``ops.backup_drills`` (``restore_drill``; a failed last drill warns too).

``backup_age_check`` needs no connection (the sets are files), so the dashboard's backups page
uses it while the database is down; ``restore_drill_check`` reads as the ops role (SELECT on
``ops.backup_drills``, granted by its migration).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psycopg

from studyhub.humanize import human_s
from studyhub.ops import backup
from studyhub.ops.health.registry import Check, CheckContext, check, grade, worst
from studyhub.profiles import Profile

BACKUP_TITLE = "Age of the newest backup set"
DRILL_TITLE = "Last successful restore drill"


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
               "(cron or systemd timer) that should run it")
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
        fix = f"{drill_fix} (and schedule it weekly: cron or a systemd timer)"
    return Check("restore_drill", DRILL_TITLE, status, value, threshold, fix=fix,
                 detail=detail, items=items)


@check("backup_age")
def backup_age(ctx: CheckContext) -> Check:
    return backup_age_check(ctx.profile, ctx.conn.info.dbname, ctx.thresholds)


@check("restore_drill")
def restore_drill(ctx: CheckContext) -> Check:
    return restore_drill_check(ctx.conn, ctx.profile, ctx.conn.info.dbname, ctx.thresholds)
