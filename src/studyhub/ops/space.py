"""How big things are: tables, their indexes and TOAST, and (optionally) exact row counts."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

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
    db, size = conn.execute(
        "SELECT current_database(), pg_database_size(current_database())"
    ).fetchone()
    return DatabaseSpace(db, size, tables)
