"""Where a profile's backup sets are kept (its targets) and the newest complete set of a
profile's database in one of them — what ``backup drill`` restores, and whose age the doctor's
``backup_age`` check and the dashboard's backups page show.

A profile's target is the one configured in ``[<profile>.backup] target`` (object storage or a
directory), else the backup directory on this machine (``$STUDYHUB_BACKUP_DIR``, else
``$STUDYHUB_HOME/backups``), where set names carry the profile and database. Sets are read
through the target (``store.Target.list_sets``), local or remote alike.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from studyhub.ops.backup.setformat import BackupError, BackupSetInfo
from studyhub.ops.backup.store import LocalTarget, Target, open_target
from studyhub.profiles import Profile, backup_config


def backup_targets(profile: Profile) -> list[Target]:
    """Every target that holds ``profile``'s backup sets (the one list the doctor, the
    dashboard and ``backup drill``'s default read): the configured one, else the backup
    directory."""
    return [open_target(None, backup_config(profile.name))]


def require_target(target: Target) -> None:
    """A target named by mistake is refused in one line before anything is done or recorded
    (an existing target without a set of the database is an answer, not a mistake): a
    directory must exist, a bucket must answer (a missing bucket or a refused credential is
    the store's own one-line error)."""
    if isinstance(target, LocalTarget):
        if not Path(target.root).is_dir():
            raise BackupError(f"no backup directory {target.root}")
    else:
        target.list_sets()


def newest_set(target: Target, profile: str, database: str) -> BackupSetInfo | None:
    """The newest complete set of ``profile``/``database`` in ``target`` (None: there is none).
    Leftovers of interrupted runs are never complete, so never chosen."""
    complete = [s for s in target.list_sets()
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
