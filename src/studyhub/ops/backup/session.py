"""What every backup, restore and import session follows: the server's own port, never a
transaction pooler; the session settings of a restore's bulk work; an exported snapshot's id,
checked before it is written into a statement."""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from studyhub.errors import RefusedError
from studyhub.ops.backup.setformat import BackupError
from studyhub.profiles import Profile

# Session settings for the restore's bulk work (PGOPTIONS of pg_restore): big sort memory for
# index builds, hash joins in memory for the foreign-key checks, no wait for WAL flush at commit,
# no parallel workers for index builds (the restore already keeps --jobs builds running; workers
# split the sort memory into external sorts and only contend: docs/backup.md has the numbers);
# plus default_toast_compression = lz4 where the server has it (COPY recompresses long values).
RESTORE_SETTINGS = {
    "maintenance_work_mem": "512MB",
    "max_parallel_maintenance_workers": "0",
    "work_mem": "256MB",
    "synchronous_commit": "off",
}


def refuse_pooler(profile: Profile) -> None:
    """Dumps and restores hold a snapshot and session state for minutes: a transaction-mode
    pooler would hand their statements to different server connections."""
    ep = profile.endpoint("app")
    if ep.via_pooler or (profile.pooler_port and ep.port == profile.pooler_port):
        raise RefusedError(
            f"profile {profile.name} points at the connection pooler (port {ep.port}); backups "
            "and restores must reach the server's own port (a transaction pooler breaks "
            "pg_dump's snapshot and session settings). Set the profile's port to the server's."
        )


def snapshot_literal(value: str) -> str:
    """An exported snapshot id as an SQL literal (``SET TRANSACTION SNAPSHOT`` takes no
    parameter); anything but the id's characters is refused."""
    if not re.fullmatch(r"[0-9A-Fa-f-]+", value):
        raise BackupError(f"unexpected snapshot id {value!r}")
    return f"'{value}'"


def hold_snapshot_locks(conn: psycopg.Connection, tables: list[tuple[str, str]],
                        lock_wait_timeout: str) -> None:
    """ACCESS SHARE locks on every table, in the snapshot's own transaction (``conn``), held
    until it ends, as pg_dump takes them: no DROP/ALTER while the dump runs."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_wait_timeout)))
    if tables:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
            sql.SQL(", ").join(sql.SQL("ONLY {}").format(sql.Identifier(*t)) for t in tables)))
