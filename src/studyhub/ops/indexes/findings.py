"""Index findings: invalid, duplicate (prefix-covered), unused, missing (heavy sequential
scans), estimated bloat, foreign keys without one — each with the DDL that fixes it — and the
naming and DDL every index statement here shares (``index_name``, ``create_index_sql``).

Read-only: works as the ops role (catalogs and statistics only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from studyhub.ops.queries import load


def _rows(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(load(name), params).fetchall()


def qualified(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def _display(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


@dataclass
class IndexDef:
    schema: str
    table: str
    index: str
    method: str
    is_unique: bool
    is_primary: bool
    is_valid: bool
    is_ready: bool
    backs_constraint: bool
    key_attnums: list[int]
    opclasses: list[int]
    key_count: int
    columns: list[str | None]  # None for an expression
    predicate: str | None
    has_expressions: bool
    definition: str
    size_bytes: int
    scans: int

    @property
    def key_columns(self) -> list[str | None]:
        return self.columns[: self.key_count]


def index_definitions(conn: psycopg.Connection) -> list[IndexDef]:
    return [IndexDef(**r) for r in _rows(conn, "get_index_definitions")]


@dataclass
class IndexFinding:
    kind: str  # invalid | duplicate | unused | missing | bloat
    schema: str
    table: str
    index: str | None
    size_bytes: int
    reason: str
    fix_sql: str | None
    covered_by: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def drop_index_sql(schema: str, index: str) -> str:
    return sql.SQL("DROP INDEX CONCURRENTLY {};").format(qualified(schema, index)).as_string(None)


def invalid_indexes(defs: list[IndexDef]) -> list[IndexFinding]:
    """Indexes not valid or not ready: a failed or running CREATE INDEX CONCURRENTLY."""
    out = []
    for d in defs:
        if d.is_valid and d.is_ready:
            continue
        rebuild = re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", d.definition)
        out.append(IndexFinding(
            "invalid", d.schema, d.table, d.index, d.size_bytes,
            "not valid" + ("" if d.is_ready else ", not ready")
            + " (a failed CREATE INDEX CONCURRENTLY, or one still running)",
            f"{drop_index_sql(d.schema, d.index)} {rebuild};"))
    return out


def _covers(small: IndexDef, big: IndexDef) -> bool:
    """``small`` is redundant given ``big``: same method and predicate, plain columns, and its
    key columns (with the same operator classes) are a prefix of ``big``'s."""
    if small.method != big.method or small.predicate != big.predicate:
        return False
    if small.has_expressions or big.has_expressions or not (big.is_valid and big.is_ready):
        return False
    n = small.key_count
    if len(small.columns) != n:  # small has INCLUDE columns: only an identical index covers it
        if small.columns != big.columns or small.key_count != big.key_count:
            return False
    if small.method != "btree" and small.key_count != big.key_count:
        return False  # prefixes only help b-trees
    if n > big.key_count:
        return False
    if small.key_attnums[:n] != big.key_attnums[:n] or small.opclasses[:n] != big.opclasses[:n]:
        return False
    if small.is_unique:  # a unique index enforces something: only an equal unique one covers it
        return big.is_unique and big.key_count == n
    return True


def duplicate_indexes(defs: list[IndexDef]) -> list[IndexFinding]:
    """Indexes whose columns are a prefix of another index's on the same table (or identical).
    Indexes backing a constraint (primary key, unique, exclusion) are never proposed for
    dropping; of two identical ones, the one without a constraint (or the later name) goes."""
    out = []
    by_table: dict[tuple[str, str], list[IndexDef]] = {}
    for d in defs:
        if d.is_valid:
            by_table.setdefault((d.schema, d.table), []).append(d)
    for group in by_table.values():
        dropped: set[str] = set()
        for small in group:
            if small.backs_constraint:
                continue
            for big in group:
                if big is small or big.index in dropped or not _covers(small, big):
                    continue
                identical = small.key_count == big.key_count and small.columns == big.columns
                if identical and not big.backs_constraint and big.index > small.index:
                    continue  # keep the first name of two identical ones; the other is reported
                what = "the same columns as" if identical else "a prefix of"
                out.append(IndexFinding(
                    "duplicate", small.schema, small.table, small.index, small.size_bytes,
                    f"({', '.join(c or '?' for c in small.key_columns)}) is {what} "
                    f"{big.index} ({', '.join(c or '?' for c in big.key_columns)})",
                    drop_index_sql(small.schema, small.index), covered_by=big.index))
                dropped.add(small.index)
                break
    return out


def sole_foreign_key_indexes(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """(schema, index) of indexes that are the only support of some foreign key."""
    return {(r["schema"], r["indexes"][0]) for r in _rows(conn, "get_foreign_key_support")
            if len(r["indexes"]) == 1}


def unused_indexes(defs: list[IndexDef],
                   keep: set[tuple[str, str]] = frozenset()) -> list[IndexFinding]:  # type: ignore[assignment]
    """Valid indexes never scanned since the statistics were reset that enforce nothing and are
    not in ``keep`` (e.g. the only index behind a foreign key: deletes on the referenced table
    need it even when no query has used it yet)."""
    return [
        IndexFinding("unused", d.schema, d.table, d.index, d.size_bytes,
                     "0 scans since the statistics were reset (check replicas too)",
                     drop_index_sql(d.schema, d.index))
        for d in sorted(defs, key=lambda d: -d.size_bytes)
        if d.scans == 0 and d.is_valid and not (d.is_unique or d.is_primary or d.backs_constraint)
        and (d.schema, d.index) not in keep
    ]


@dataclass
class ForeignKeyWithoutIndex:
    schema: str
    table: str
    constraint: str
    columns: list[str]
    referenced_table: str
    table_bytes: int
    fix_sql: str


def index_name(table: str, columns: list[str]) -> str:
    """Our naming convention (ix_<table>_<col>_<col>), cut to PostgreSQL's 63 bytes
    (NAMEDATALEN - 1; bytes of UTF-8, never splitting a character), as the server would
    truncate it — so the name we report is the name the index gets."""
    name = f"ix_{table}_{'_'.join(columns)}"
    return name.encode()[:63].decode(errors="ignore")


def create_index_sql(schema: str, table: str, columns: list[str], name: str | None = None,
                     *, concurrently: bool = True) -> sql.Composed:
    return sql.SQL("CREATE INDEX {conc}{name} ON {table} ({cols})").format(
        conc=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name or index_name(table, columns)),
        table=qualified(schema, table),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns))


def foreign_keys_without_index(conn: psycopg.Connection) -> list[ForeignKeyWithoutIndex]:
    out = []
    for r in _rows(conn, "get_foreign_keys_without_index"):
        fix = create_index_sql(r["schema"], r["table"], r["columns"]).as_string(None) + ";"
        out.append(ForeignKeyWithoutIndex(**r, fix_sql=fix))
    return out


def missing_indexes(conn: psycopg.Connection, *, min_rows: int = 10_000,
                    min_seq_share_pct: float = 5.0) -> list[IndexFinding]:
    """Tables of at least ``min_rows`` live rows read mostly by sequential scans (by more than
    ``min_seq_share_pct`` of scans). Which columns to index is the advisor's job (it plans the
    actual statements): the fix names it."""
    out = []
    for r in _rows(conn, "get_seq_scan_heavy_tables"):
        total = r["seq_scan"] + r["idx_scan"]
        share = 100.0 * r["seq_scan"] / total if total else 0.0
        if (r["live_rows"] or 0) < min_rows or share < min_seq_share_pct:
            continue
        avg = r["seq_tup_read"] // max(1, r["seq_scan"])
        out.append(IndexFinding(
            "missing", r["schema"], r["table"], None, r["table_bytes"],
            f"{r['seq_scan']:,} sequential scans ({share:.0f}% of scans) reading "
            f"~{avg:,} rows each",
            None,
            details={"seq_scan": r["seq_scan"], "seq_tup_read": r["seq_tup_read"],
                     "idx_scan": r["idx_scan"], "live_rows": r["live_rows"],
                     "hint": "studyhub diag advise (plans the statements behind these scans and "
                             "proposes the exact CREATE INDEX)"}))
    return out


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


ALIGN = {"c": 1, "s": 2, "i": 4, "d": 8}


def estimated_bloat(conn: psycopg.Connection, *, min_bytes: int = 10 * 1024**2,
                    min_pct: float = 30.0) -> list[IndexFinding]:
    """B-tree indexes of at least ``min_bytes`` whose size exceeds the size a fresh build would
    have by ``min_pct``%. The estimate needs fixed-width keys (uuid, integers, timestamps);
    indexes with variable-width keys are skipped (their width needs pg_stats, which the ops
    role may not read)."""
    out = []
    for r in _rows(conn, "get_btree_index_shapes"):
        size = r["pages"] * r["block_size"]
        if size < min_bytes or r["tuples"] <= 0 or any(n < 0 for n in r["key_lengths"]):
            continue
        data = 0
        for length, align in zip(r["key_lengths"], r["key_aligns"]):
            data = _align(data, ALIGN.get(align, 8)) + length
        tuple_bytes = _align(8 + data, 8) + 4  # IndexTupleData header + MAXALIGN, line pointer
        usable = (r["block_size"] - 24 - 16) * r["fillfactor"] / 100.0
        per_page = max(1, int(usable // tuple_bytes))
        expected_pages = math.ceil(r["tuples"] / per_page) * 1.01 + 2  # + inner pages, meta
        pct = 100.0 * (1 - expected_pages / max(1, r["pages"]))
        if pct >= min_pct:
            fix = sql.SQL("REINDEX INDEX CONCURRENTLY {};").format(
                qualified(r["schema"], r["index"])).as_string(None)
            out.append(IndexFinding(
                "bloat", r["schema"], r["table"], r["index"], size,
                f"~{pct:.0f}% bloat (estimated {expected_pages * r['block_size'] / 1024**2:.1f} "
                f"MB when rebuilt)", fix,
                details={"bloat_pct": round(pct, 1),
                         "expected_bytes": int(expected_pages * r["block_size"])}))
    return out


@dataclass
class IndexReport:
    database: str
    missing: list[IndexFinding]
    unused: list[IndexFinding]
    duplicate: list[IndexFinding]
    invalid: list[IndexFinding]
    bloat: list[IndexFinding]
    foreign_keys_without_index: list[ForeignKeyWithoutIndex]


def index_report(conn: psycopg.Connection, *, unused_min_bytes: int = 0,
                 bloat_min_bytes: int = 10 * 1024**2) -> IndexReport:
    defs = index_definitions(conn)
    return IndexReport(
        database=conn.info.dbname,
        missing=missing_indexes(conn),
        unused=[f for f in unused_indexes(defs, sole_foreign_key_indexes(conn))
                if f.size_bytes >= unused_min_bytes],
        duplicate=duplicate_indexes(defs),
        invalid=invalid_indexes(defs),
        bloat=estimated_bloat(conn, min_bytes=bloat_min_bytes),
        foreign_keys_without_index=foreign_keys_without_index(conn),
    )
