"""Restore drills (``backup drill``): what proves a backup is usable. Take the newest complete
set of a profile's database from a target, restore it into a scratch database on the LOCAL
cluster (never onto the source), let the restore compare every table's rows and checksum
with the manifest, time it, drop the scratch database however the drill ends, and record the
result in the source's ``ops.backup_drills`` (failed drills too), where ``diag doctor`` and
the dashboard of that profile read it.

The set storage is reached only through a target (``store.Target``: a directory or object
storage, ``targets.newest_set``) and ``restore_set``, streamed and decrypted like any restore
(the source profile's backup settings give the identity file and the verify key).

What the drill changes: a scratch database on the local cluster, created and dropped; one row
in the source's ``ops.backup_drills``. The source's data is only read (from the set), so a
drill of production needs no ``--profile production``: the row is bookkeeping, like the
statement snapshots ``diag slow-queries`` stores. A read-only profile gets no row (the result
says so). Audited as ``backup.drill``, with outcome ``failed`` when the drill failed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from studyhub.audit import audited
from studyhub.connect import ConnectError, connect, first_line
from studyhub.errors import LocalClusterError, RefusedError, StudyhubError
from studyhub.ops.backup.finish import RestoreMismatch
from studyhub.ops.backup.restore import restore_set
from studyhub.ops.backup.setformat import BackupError
from studyhub.ops.backup.staging import admin_connection, drop_database, staging_name
from studyhub.ops.backup.store import Target, open_target
from studyhub.ops.backup.targets import (
    age_s,
    backup_targets,
    newest_set,
    require_target,
    set_time,
)
from studyhub.ops.backup.workers import DEFAULT_JOBS, ProgressEvent, ProgressFn, no_progress
from studyhub.ops.queries import load
from studyhub.profiles import Profile, backup_config, resolve_profile

SCRATCH_PREFIX = "studyhub_drill_"
DRILLS_TABLE = "ops.backup_drills"


@dataclass
class DrillTable:
    """One table of a drilled set: its rows as restored, and whether they match the manifest."""

    table: str  # schema.table
    rows: int | None
    ok: bool
    problem: str | None = None


@dataclass
class DrillResult:
    profile: str  # the source: whose backups were drilled
    database: str
    target: str  # where the set came from
    set_name: str | None  # None: no complete set to drill
    set_created_at: str | None  # UTC, ISO 8601
    set_age_s: float | None  # the set's age when drilled
    restored_on: str | None  # local/<scratch database>, dropped afterwards
    drilled_at: str  # when the drill finished (UTC, ISO 8601)
    duration_s: float  # the restore and its verification
    tables: int
    rows: int
    ok: bool
    problems: list[str]
    table_results: list[DrillTable] = field(default_factory=list)
    recorded: bool = False  # a row in the source's ops.backup_drills
    record_note: str | None = None  # why not


@dataclass
class DrillRecord:
    """One row of ``ops.backup_drills``."""

    id: int
    drilled_at: datetime
    profile: str
    database: str
    target: str
    set_name: str | None
    set_created_at: datetime | None
    ok: bool
    duration_s: float
    tables: int
    rows: int
    problems: list[str]


class DrillFailed(BackupError):
    """A drill that ran and failed (its result is recorded and returned; this only carries
    the failure into the audit line)."""


class DrillsUnavailable(StudyhubError):
    """``ops.backup_drills`` cannot be read here: not migrated, or no privilege (``fix``)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message}: {fix}")
        self.fix = fix


def scratch_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")
    return f"{SCRATCH_PREFIX}{stamp}_{os.getpid()}"


def require_local_cluster(local: Profile) -> None:
    """A drill restores into the local cluster only, and it must be running (one line)."""
    if not local.is_local:
        raise RefusedError(f"a drill restores into the local cluster only, not into {local.name}")
    try:
        with admin_connection(local):
            pass
    except ConnectError as exc:
        raise LocalClusterError(
            f"the local cluster is not running ({exc}); a drill restores into a scratch "
            "database there: start it with: studyhub local up") from None


def drill_backup(source: Profile, target: str | Path | Target | None = None, *,
                 local: Profile | None = None,
                 jobs: int = DEFAULT_JOBS, progress: ProgressFn = no_progress) -> DrillResult:
    """Drill the newest complete set of ``source``'s database in ``target`` (default: the
    profile's first target) on the local cluster; record the result in the source (see the
    module docstring). Returns the result whether the drill passed or failed; raises only
    when it could not start (bad ``jobs``, no such target, the local cluster not up: nothing
    done, nothing recorded) or was interrupted."""
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    if target is None:  # the profile's own: not there yet means no set yet (a failed drill)
        target = backup_targets(source)[0]
    else:  # named: a typo must not record a failed drill
        target = open_target(target, backup_config(source.name))
        require_target(target)
    local = local if local is not None else resolve_profile("local")
    require_local_cluster(local)
    result: DrillResult | None = None
    try:
        with audited("backup.drill", source.name, database=source.database,
                     target=target.url) as line:
            result = _drill(source, target, local, jobs, progress)
            result.recorded, result.record_note = record_drill(source, result)
            line.update(set=result.set_name, restored_on=result.restored_on, ok=result.ok,
                        tables=result.tables, rows=result.rows, duration_s=result.duration_s,
                        recorded=result.recorded)
            if not result.ok:  # outcome "failed" in the audit line, with the first problem
                raise DrillFailed(result.problems[0])
    except DrillFailed:
        pass
    assert result is not None
    return result


def _drill(source: Profile, target: Target, local: Profile, jobs: int,
           progress: ProgressFn) -> DrillResult:
    problems: list[str] = []
    try:
        info = newest_set(target, source.name, source.database)
    except OSError as exc:
        info = None
        problems.append(f"cannot list {target.url}: {exc.strerror or exc}")
    except BackupError as exc:  # the store's own one line (unreachable bucket, credential)
        info = None
        problems.append(f"cannot list {target.url}: {exc}")
    tables: list[DrillTable] = []
    n_tables = rows = 0
    duration = 0.0
    scratch = None
    if info is None and not problems:
        problems.append(f"no complete backup set of {source.name}/{source.database} in "
                        f"{target.url}; make one: studyhub backup create -p {source.name}")
    elif info is not None:
        scratch = scratch_name()
        progress(ProgressEvent("drill", 0, 1, message=info.name))
        t0 = time.monotonic()
        try:
            restored = restore_set(target, info.name, local, scratch,
                                   config=backup_config(source.name), jobs=jobs,
                                   reapply_erasures=False, progress=progress)
            tables = [DrillTable(t.qualified, t.rows, True)
                      for t in sorted(restored.verified_tables, key=lambda t: t.qualified)]
            n_tables, rows = restored.tables, restored.rows
        except RestoreMismatch as exc:
            bad = {p.path: p.issue for p in exc.problems}
            tables = [DrillTable(t.qualified, t.rows, t.qualified not in bad,
                                 bad.get(t.qualified))
                      for t in sorted(exc.restored, key=lambda t: t.qualified)]
            tables += [DrillTable(name, None, False, issue) for name, issue in bad.items()
                       if name not in {t.qualified for t in exc.restored}]
            n_tables, rows = len(exc.restored), sum(t.rows for t in exc.restored)
            problems += [f"{name}: {issue}" for name, issue in bad.items()]
        except (StudyhubError, psycopg.Error) as exc:
            problems.append(first_line(exc))
        finally:
            duration = round(time.monotonic() - t0, 3)
            problems += drop_scratch(local, scratch)
    now = datetime.now(timezone.utc)
    created = set_time(info) if info else None
    return DrillResult(
        source.name, source.database, target.url, info.name if info else None,
        created.isoformat(timespec="seconds") if created else None,
        round(age_s(created, now), 1) if created else None,
        f"{local.name}/{scratch}" if scratch else None, now.isoformat(timespec="seconds"),
        duration, n_tables, rows, not problems, problems, tables)


def drop_scratch(local: Profile, scratch: str) -> list[str]:
    """Drop the scratch database and the restore's staging database (if a failed restore
    left it); returns a problem when that is impossible (say the local cluster died)."""
    try:
        with admin_connection(local) as admin:
            drop_database(admin, scratch)
            drop_database(admin, staging_name(scratch))
    except (StudyhubError, psycopg.Error) as exc:
        return [f"could not drop the scratch database {scratch} on {local.name} "
                f"({first_line(exc)}); drop it by hand: DROP DATABASE IF EXISTS {scratch} "
                f"WITH (FORCE); DROP DATABASE IF EXISTS {staging_name(scratch)} WITH (FORCE);"]
    return []


def record_drill(source: Profile, result: DrillResult) -> tuple[bool, str | None]:
    """One row in the source's ``ops.backup_drills``, as the app role. Returns whether it was
    recorded, and why not: a read-only profile is never written; a database that is not
    migrated or cannot be reached is named."""
    where = f"{source.name}/{source.database}"
    if source.read_only:
        return False, (f"not recorded: profile {source.name} is read-only, so nothing is "
                       f"written there (the result is only printed)")
    try:
        with connect(source, "app", application_name="studyhub backup drill") as conn:
            conn.execute(load("insert_backup_drill"), {
                "drilled_at": datetime.fromisoformat(result.drilled_at),
                "profile": result.profile, "database": result.database,
                "target": result.target, "set_name": result.set_name,
                "set_created_at": (datetime.fromisoformat(result.set_created_at)
                                   if result.set_created_at else None),
                "ok": result.ok, "duration_s": result.duration_s, "tables": result.tables,
                "rows": result.rows, "problems": result.problems})
    except psycopg.errors.UndefinedTable:
        return False, (f"not recorded: {where} has no {DRILLS_TABLE} (not migrated); run: "
                       f"studyhub migrate up -p {source.name}")
    except psycopg.errors.ReadOnlySqlTransaction:
        return False, f"not recorded: {where} is read-only (a standby?)"
    except (StudyhubError, psycopg.Error) as exc:
        return False, f"not recorded in {where}: {first_line(exc)}"
    return True, None


def _read_drills(conn: psycopg.Connection, query: str,
                 params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(load(query), params).fetchall()
    except psycopg.errors.UndefinedTable:
        raise DrillsUnavailable(f"{DRILLS_TABLE} is missing in {conn.info.dbname} (not migrated)",
                                f"run studyhub migrate up -p {params['profile']}") from None
    except psycopg.errors.InsufficientPrivilege:
        raise DrillsUnavailable(
            f"role {conn.info.user} may not read {DRILLS_TABLE}",
            f"GRANT USAGE ON SCHEMA ops TO {conn.info.user}; GRANT SELECT ON {DRILLS_TABLE} "
            f"TO {conn.info.user};") from None


def recent_drills(conn: psycopg.Connection, profile: str, database: str,
                  limit: int = 10) -> list[DrillRecord]:
    """The newest drills of ``profile``/``database`` recorded in this database, newest first.
    Raises ``DrillsUnavailable`` (one line with the fix) when the table cannot be read."""
    rows = _read_drills(conn, "get_backup_drills",
                        {"profile": profile, "database": database, "limit": limit})
    return [DrillRecord(**r) for r in rows]


def last_drills(conn: psycopg.Connection, profile: str,
                database: str) -> tuple[DrillRecord | None, DrillRecord | None]:
    """The newest drill of ``profile``/``database`` and its newest successful one."""
    rows = _read_drills(conn, "get_last_backup_drills", {"profile": profile, "database": database})
    found = {r.pop("which"): DrillRecord(**r) for r in rows}
    return found.get("last"), found.get("last_ok")
