"""Every table's row count and content checksum, computed by the server (so it can be
recomputed on any restored copy): the record hash of ``get_table_rows_and_checksum.sql``, or the
row-text hash where a column type has no hash function; and their comparison with a
manifest's."""

from __future__ import annotations

import threading
from typing import Callable

import psycopg
from psycopg import sql

from studyhub.connect import connect
from studyhub.ops.backup.session import snapshot_literal
from studyhub.ops.backup.setformat import Problem, TableChecksum
from studyhub.ops.backup.workers import (
    DEFAULT_JOBS,
    ProgressEvent,
    ProgressFn,
    no_progress,
    raise_first,
    run_threads,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

# Row text (and so the checksum) depends on these; both sides of a comparison pin them.
CHECKSUM_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
)
CHECKSUM_QUERIES = {"record-hash": "get_table_rows_and_checksum",
                    "text-hash": "get_table_rows_and_text_checksum"}


def pin_checksum_settings(conn: psycopg.Connection) -> None:
    for stmt in CHECKSUM_SETTINGS:
        conn.execute(stmt)


def list_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(s, t) for s, t in conn.execute(load("get_backup_tables")).fetchall()]


def checksum_one(conn: psycopg.Connection, schema: str, table: str,
                 method: str | None = None) -> TableChecksum:
    """Rows and checksum of one table by ``method``; without one, the record hash, falling
    back to the text hash when a column type has no hash function (inside a savepoint, so a
    snapshot transaction survives the failed attempt)."""
    for m in ([method] if method else ["record-hash", "text-hash"]):
        query = sql.SQL(load(CHECKSUM_QUERIES[m])).format(table=sql.Identifier(schema, table))
        try:
            with conn.transaction():
                rows, checksum = conn.execute(query).fetchone()
            return TableChecksum(schema, table, int(rows), str(checksum), m)
        except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
            if method:
                raise
    raise AssertionError("unreachable")


def table_checksums(
    profile: Profile,
    tables: list[tuple[str, str]],
    *,
    database: str | None = None,
    snapshot: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressFn = no_progress,
    after_each: Callable[[psycopg.Connection, str, str], None] | None = None,
    methods: dict[str, str] | None = None,
) -> list[TableChecksum]:
    """Rows and checksum of each table, on ``jobs`` connections (all importing ``snapshot``
    when given, so they see exactly what the dump sees). Biggest tables should come first.
    ``methods`` (qualified name → method) reproduces a manifest's choices."""
    queue = list(tables)
    lock = threading.Lock()
    results: dict[tuple[str, str], TableChecksum] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(profile, "app", database=database,
                         application_name="studyhub backup checksum") as conn:
                pin_checksum_settings(conn)
                conn.commit()
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    conn.execute("SET TRANSACTION SNAPSHOT %s" % snapshot_literal(snapshot))
                while True:
                    with lock:
                        if not queue or errors:
                            break
                        schema, table = queue.pop(0)
                    results[(schema, table)] = checksum_one(
                        conn, schema, table, (methods or {}).get(f"{schema}.{table}"))
                    if after_each:
                        after_each(conn, schema, table)
                    with lock:
                        progress(ProgressEvent("checksum", len(results), len(tables),
                                               message=f"{schema}.{table}"))
                conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    run_threads(worker, min(jobs, len(tables)))
    raise_first(errors, "checksum query")
    return [results[t] for t in tables]


def compare_tables(expected: list[TableChecksum], actual: list[TableChecksum]) -> list[Problem]:
    got = {t.qualified: t for t in actual}
    problems = []
    for t in expected:
        a = got.get(t.qualified)
        if a is None:
            problems.append(Problem(t.qualified, "table missing after restore"))
        elif a.rows != t.rows:
            problems.append(Problem(t.qualified, f"{a.rows} rows, backup has {t.rows}"))
        elif a.checksum != t.checksum:
            problems.append(Problem(t.qualified, "content checksum differs from the backup"))
    return problems
