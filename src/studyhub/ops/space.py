"""How big things are: tables, their indexes and TOAST, and (optionally) exact row counts; and
how they grew, from the snapshots stored in ``ops.database_size_snapshots`` and
``ops.table_size_snapshots`` (migration w01; taken by ``studyhub agent``'s capture job,
``studyhub.ops.capture``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from studyhub.ops.queries import load


@dataclass
class TableSize:
    schema: str
    table: str
    row_estimate: int
    total_bytes: int
    heap_bytes: int
    index_bytes: int
    toast_bytes: int
    rows: int | None = None  # exact count, when asked for


@dataclass
class DatabaseSpace:
    database: str
    database_bytes: int
    tables: list[TableSize]


def table_sizes(conn: psycopg.Connection, *, exact_counts: bool = False) -> DatabaseSpace:
    """Sizes of every user table; with ``exact_counts`` also ``count(*)`` of each (one snapshot)."""
    rows = conn.execute(load("get_table_sizes")).fetchall()
    tables = [TableSize(*r) for r in rows]
    if exact_counts and tables:
        union = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}, count(*) FROM {}").format(
                sql.Literal(f"{t.schema}.{t.table}"), sql.Identifier(t.schema, t.table)
            )
            for t in tables
        )
        counts = dict(conn.execute(union).fetchall())
        for t in tables:
            t.rows = counts[f"{t.schema}.{t.table}"]
    db, size = conn.execute(load("get_database_size")).fetchone()
    return DatabaseSpace(db, size, tables)


# ------------------------------------------------------------------------- growth over time
SIZE_SNAPSHOT_KEEP = "90 days"


def save_size_snapshot(conn: psycopg.Connection, space: DatabaseSpace,
                       captured_at: datetime | None = None) -> str | None:
    """Store the database's and every table's size; returns why not when it cannot (history
    table missing, or no INSERT on it)."""
    row = conn.execute(load("get_table_exists"), {"name": "ops.table_size_snapshots"}).fetchone()
    if not row[0]:
        return ("size history not saved: ops.table_size_snapshots is missing "
                "(run: studyhub migrate up)")
    if not row[1]:
        return "size history not saved: this role may not INSERT into ops.table_size_snapshots"
    captured_at = captured_at or datetime.now(timezone.utc)
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute(load("insert_database_size_snapshot"),
                        {"captured_at": captured_at, "database": space.database,
                         "database_bytes": space.database_bytes})
            cur.executemany(load("insert_table_size_snapshot"), [
                {"captured_at": captured_at, "database": space.database, "schema": t.schema,
                 "table": t.table, "row_estimate": t.row_estimate, "total_bytes": t.total_bytes,
                 "heap_bytes": t.heap_bytes, "index_bytes": t.index_bytes,
                 "toast_bytes": t.toast_bytes} for t in space.tables])
            cur.execute(load("delete_old_size_snapshots"), {"keep": SIZE_SNAPSHOT_KEEP})
    return None


def capture_sizes(conn: psycopg.Connection, captured_at: datetime | None = None) -> str | None:
    """Measure (estimates only: works as the ops role) and store one size snapshot."""
    return save_size_snapshot(conn, table_sizes(conn), captured_at)


def latest_size_snapshot_at(conn: psycopg.Connection) -> datetime | None:
    """When this database's sizes were last stored (None: never, or no history table)."""
    exists = conn.execute(load("get_table_exists"), {"name": "ops.database_size_snapshots"})
    if not exists.fetchone()[0]:
        return None
    return conn.execute(load("get_latest_size_snapshot")).fetchone()[0]


@dataclass
class SizePoint:
    captured_at: datetime
    total_bytes: int
    row_estimate: int | None = None


@dataclass
class TableGrowth:
    schema: str
    table: str
    points: list[SizePoint]
    first_bytes: int
    last_bytes: int
    growth_bytes: int
    row_growth: int


@dataclass
class SizeHistory:
    database: str
    since: datetime
    database_points: list[SizePoint]
    tables: list[TableGrowth] = field(default_factory=list)  # biggest growth first
    note: str | None = None

    @property
    def database_growth_bytes(self) -> int | None:
        if len(self.database_points) < 2:
            return None
        return self.database_points[-1].total_bytes - self.database_points[0].total_bytes


def size_history(conn: psycopg.Connection, since: datetime) -> SizeHistory:
    """The database's and each table's size at every stored snapshot since ``since``, and each
    table's growth over that window (last minus first snapshot it appears in)."""
    exists = conn.execute(load("get_table_exists"), {"name": "ops.table_size_snapshots"})
    if not exists.fetchone()[0]:
        return SizeHistory(conn.info.dbname, since, [],
                           note="no size history: ops.table_size_snapshots is missing "
                                "(run: studyhub migrate up)")
    with conn.cursor(row_factory=dict_row) as cur:
        db_rows = cur.execute(load("get_database_size_history"), {"since": since}).fetchall()
        table_rows = cur.execute(load("get_table_size_history"), {"since": since}).fetchall()
    by_table: dict[tuple[str, str], list[SizePoint]] = {}
    for r in table_rows:
        by_table.setdefault((r["schema"], r["table"]), []).append(
            SizePoint(r["captured_at"], r["total_bytes"], r["row_estimate"]))
    tables = [
        TableGrowth(schema, table, pts, pts[0].total_bytes, pts[-1].total_bytes,
                    pts[-1].total_bytes - pts[0].total_bytes,
                    (pts[-1].row_estimate or 0) - (pts[0].row_estimate or 0))
        for (schema, table), pts in by_table.items()
    ]
    tables.sort(key=lambda t: (-t.growth_bytes, -t.last_bytes))
    note = None if len(db_rows) >= 2 else (
        "growth needs at least two snapshots in the window; the dashboard takes one every "
        "capture interval")
    return SizeHistory(conn.info.dbname, since,
                       [SizePoint(r["captured_at"], r["database_bytes"]) for r in db_rows],
                       tables, note)
