"""Where a profile's backup sets are kept (its targets) and the newest complete set of a
profile's database in one of them — what ``backup drill`` restores, and whose age the doctor's
``backup_age`` check and the dashboard's backups page show.

Today a target is a backup directory on this machine, and every profile has one: the backup
directory (``$STUDYHUB_BACKUP_DIR``, else ``$STUDYHUB_HOME/backups``), where set names carry
the profile and database. Remote targets (object storage) are added in
:func:`backup_targets`; everything else reads the sets through ``list_sets``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from studyhub.ops.backup.setformat import (
    BackupError,
    BackupSetInfo,
    default_backup_dir,
    list_sets,
)
from studyhub.profiles import Profile


def backup_targets(profile: Profile) -> list[Path]:
    """Every target that holds ``profile``'s backup sets (the one list the doctor, the
    dashboard and ``backup drill``'s default read)."""
    del profile  # every profile's sets share the backup directory today
    return [default_backup_dir()]


def require_target(target: Path) -> None:
    """A target named by mistake is refused in one line before anything is done or recorded
    (an existing target without a set of the database is an answer, not a mistake)."""
    if not target.is_dir():
        raise BackupError(f"no backup directory {target}")


def newest_set(target: Path, profile: str, database: str) -> BackupSetInfo | None:
    """The newest complete set of ``profile``/``database`` in ``target`` (None: there is none).
    Leftovers of interrupted runs are never complete, so never chosen."""
    complete = [s for s in list_sets(target)
                if s.status == "complete" and s.profile == profile and s.database == database
                and s.created_at]
    return max(complete, key=lambda s: set_time(s) or datetime.min.replace(tzinfo=timezone.utc),
               default=None)


def set_time(info: BackupSetInfo) -> datetime | None:
    """When a set was taken (its manifest's start, as UTC)."""
    if not info.created_at:
        return None
    try:
        when = datetime.fromisoformat(info.created_at)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def age_s(when: datetime | None, now: datetime | None = None) -> float | None:
    if when is None:
        return None
    return ((now or datetime.now(timezone.utc)) - when).total_seconds()
