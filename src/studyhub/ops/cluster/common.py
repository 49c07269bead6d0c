"""What both cluster backends do with PostgreSQL itself: verify what a fork (or a restore)
holds, re-apply the erasure ledger to a new fork, and read the streaming replicas' lag.
"""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg
from psycopg import sql

from studyhub.connect import ConnectError, connect, first_line
from studyhub.errors import StudyhubError
from studyhub.ops.backup.setformat import default_backup_dir
from studyhub.ops.cluster.types import (
    ClusterOpError,
    ForkErasures,
    StreamingClient,
    TableCheck,
    Verification,
)
from studyhub.ops.privacy.ledger import reapply_erasure_ledger
from studyhub.ops.queries import load
from studyhub.profiles import Profile

# The app's key tables and the column that says how recent their data is: what a fork or a
# restore is checked with, so the operator sees which point in time they got.
KEY_TABLES: tuple[tuple[str, str], ...] = (
    ("users", "created_at"),
    ("students", "created_at"),
    ("subjects", "created_at"),
    ("notes", "updated_at"),
    ("flashcards", "updated_at"),
    ("flashcard_reviews", "reviewed_at"),
    ("revision_sessions", "started_at"),
    ("ai_interactions", "created_at"),
)


def verify_database(conn: psycopg.Connection) -> Verification:
    """Row counts and newest timestamps of the key tables (one read-only snapshot; the
    connection must be in autocommit mode): which point in time a fork or a restore holds.
    Tables the database does not have are listed, not fatal."""
    names = [t for t, _ in KEY_TABLES]
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        database = conn.execute("SELECT current_database()").fetchone()[0]
        present = {r[0] for r in conn.execute(load("get_present_tables"), (names,)).fetchall()}
        checks = [(t, c) for t, c in KEY_TABLES if t in present]
        rows = {}
        if checks:
            union = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, count(*), max({}) FROM {}").format(
                    sql.Literal(t), sql.Identifier(c), sql.Identifier("public", t)
                )
                for t, c in checks
            )
            rows = {r[0]: r for r in conn.execute(union).fetchall()}
    tables = [TableCheck(t, rows[t][1], c, rows[t][2]) for t, c in checks]
    return Verification(database, tables, [t for t in names if t not in present])


def verify_profile(profile: Profile) -> Verification:
    """``verify_database`` over a fresh connection as the app role; a connection failure is
    reported in the result (the fork exists either way)."""
    try:
        with connect(profile, "app", autocommit=True,
                     application_name="studyhub cluster verify") as conn:
            return verify_database(conn)
    except ConnectError as exc:
        return Verification(profile.database, [], [], error=str(exc))
    except psycopg.Error as exc:
        return Verification(profile.database, [], [], error=first_line(exc))


def fork_profile(source: Profile, name: str, host: str | None, port: int) -> Profile:
    """How to reach a fork: the source profile's database, roles and TLS settings on the
    fork's host and port (a fork has the source's roles and passwords)."""
    return replace(source, name=name, host=host or source.host, port=port, pooler_port=None,
                   pooler_host=None, replica_host=None, replica_port=None, replicas=())


def erasure_plan_line(reapply_erasures: bool) -> str:
    if reapply_erasures:
        return ("then erase again everyone in the erasure ledger (the source database's "
                "ops.erasure_ledger + erasure-ledger.jsonl beside the backups) who is in the fork")
    return ("NOT re-applying the erasure ledger (--no-reapply-erasures): people erased after the "
            "point in time will be in the fork")


def reapply_erasures_on_fork(source: Profile, fork: Profile, name: str) -> ForkErasures:
    """Re-apply the source's erasure ledger (its database's ops.erasure_ledger merged with the
    ledger file kept beside backups and the fork's own) to the fork, as the app role, in one
    verified transaction (``privacy.reapply_erasure_ledger``, as after a restore). Refuses with
    a clear error when the source's ledger cannot be read: the fork would keep erased people."""
    started = time.monotonic()
    remedy = (f"fork {name} is up but may hold people erased after its point in time; remove "
              f"it (studyhub cluster forks remove {name}) or re-apply the ledger before anyone "
              f"uses it (studyhub privacy reapply-erasures --fork {name} --profile {source.name})")
    try:
        done = reapply_erasure_ledger(fork, fork.database, default_backup_dir(), source.database,
                                      live_profile=source)
    except ConnectError as exc:
        raise ClusterOpError(f"cannot re-apply the erasure ledger: {exc}; {remedy}") from None
    except StudyhubError as exc:
        raise ClusterOpError(f"re-applying the erasure ledger failed: {first_line(exc)}; "
                             f"{remedy}") from None
    except psycopg.Error as exc:
        raise ClusterOpError(f"re-applying the erasure ledger failed: {first_line(exc)}; "
                             f"{remedy}") from None
    if f"live database {source.database} (unreachable)" in done.sources:
        raise ClusterOpError(f"cannot read the erasure ledger of the source database "
                             f"{source.database} (profile {source.name}): {remedy}")
    result = ForkErasures(done.status, done.entries, sources=dict(done.sources),
                          duration_s=round(time.monotonic() - started, 3))
    if done.result is not None:
        result.reapplied = done.result.people_present
        result.already_absent = len(done.result.people) - done.result.people_present
        result.rows_deleted = done.result.rows_total
    return result


def streaming_clients(profile: Profile) -> tuple[list[StreamingClient], str | None]:
    """pg_stat_replication on the primary, as the ops role (pg_monitor); (rows, problem)."""
    try:
        with connect(profile, "ops", application_name="studyhub cluster info") as conn:
            rows = conn.execute(load("get_replication_lag")).fetchall()
    except ConnectError as exc:
        return [], f"replication lag unavailable: {exc}"
    except psycopg.Error as exc:
        return [], f"replication lag unavailable: {first_line(exc)}"
    return [StreamingClient(*r) for r in rows], None
