"""Indexes: invalid, duplicate (prefix-covered), unused, missing (heavy sequential scans),
estimated bloat, foreign keys without one — each with the DDL that fixes it — and
``create_index``: CREATE INDEX CONCURRENTLY done safely.

The read-only parts work as the ops role (catalogs and statistics only). Building an index
needs the table's owner (the app role).
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from studyhub.connect import first_line
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
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


# ------------------------------------------------------------------------ create-index
class IndexBuildError(StudyhubError):
    pass


@dataclass
class BuildProgress:
    phase: str
    blocks_done: int
    blocks_total: int
    tuples_done: int
    tuples_total: int

    @property
    def fraction(self) -> float | None:
        if self.blocks_total:
            return min(1.0, self.blocks_done / self.blocks_total)
        if self.tuples_total:
            return min(1.0, self.tuples_done / self.tuples_total)
        return None


@dataclass
class IndexBuildResult:
    schema: str
    table: str
    index: str
    columns: list[str]
    statement: str
    attempts: int
    duration_s: float
    is_valid: bool
    is_ready: bool
    already_existed: bool = False
    dropped_leftovers: int = 0


def split_table(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return (schema or "public"), name


def check_index_target(conn: psycopg.Connection, table: str,
                       columns: list[str]) -> tuple[str, str]:
    """(schema, table) when ``table`` exists and has every one of ``columns`` (at least one);
    otherwise StudyhubError naming what is wrong (and the columns it does have)."""
    if not columns or not all(c.strip() for c in columns):
        raise StudyhubError("name at least one column to index")
    schema, tname = split_table(table)
    if not tname:
        raise StudyhubError("name the table to index")
    known = [r["column"] for r in _rows(conn, "get_table_columns", {"schema": schema, "table": tname})]
    if not known:
        raise StudyhubError(f"no table {schema}.{tname}")
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise StudyhubError(f"table {_display(schema, tname)} has no column(s) "
                            f"{', '.join(unknown)}; it has {', '.join(known)}")
    return schema, tname


def ensure_outside_transaction(conn: psycopg.Connection, pooler_ports: set[int]) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction block, and through a
    transaction-mode pooler its session-level lock_timeout and the build itself may land on
    different server connections."""
    if int(conn.info.port) in pooler_ports:
        raise RefusedError("refusing to build an index through the transaction pooler "
                           f"(port {conn.info.port}); connect to the server's own port")
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RefusedError("refusing to run CREATE INDEX CONCURRENTLY inside a transaction "
                           "(it cannot run in one); use an autocommit connection")


def create_index(
    conn: psycopg.Connection,
    table: str,
    columns: list[str],
    *,
    name: str | None = None,
    lock_timeout: str = "5s",
    retries: int = 3,
    pooler_ports: set[int] | frozenset[int] = frozenset(),
    monitor: Callable[[], psycopg.Connection] | None = None,
    progress: Callable[[BuildProgress], None] | None = None,
    poll_s: float = 0.5,
    cleanup_timeout: str = "60s",
) -> IndexBuildResult:
    """``CREATE INDEX CONCURRENTLY`` on ``conn`` (the table owner, autocommit, not through the
    pooler) with ``lock_timeout``; on a lock timeout it drops the invalid leftover and retries
    (``retries`` times). ``monitor`` opens a second connection to report
    pg_stat_progress_create_index to ``progress``. Verifies indisvalid and indisready; when the
    build fails it drops the invalid index it left and raises with the reason."""
    ensure_outside_transaction(conn, set(pooler_ports))
    schema, tname = check_index_target(conn, table, columns)
    iname = name or index_name(tname, columns)
    stmt = create_index_sql(schema, tname, columns, iname)
    text = stmt.as_string(conn)
    found = _index_info(conn, schema, iname)
    if found is not None:
        _require_same_index(found, schema, tname, columns, iname)
    if found is not None and found["is_valid"] and found["is_ready"]:
        return IndexBuildResult(schema, tname, iname, columns, text, 0, 0.0, True, True,
                                already_existed=True)
    dropped = 0
    if found is not None:  # an invalid leftover of an earlier attempt at this very index
        _drop_index(conn, schema, iname)
        dropped += 1
    lock_timeout = parse_timeout(lock_timeout, what="lock timeout", max_s=600)
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        error = _build_with_progress(conn, stmt, monitor, progress, poll_s)
        if error is None:
            break
        leftover = _index_state(conn, schema, iname)
        if leftover is not None:
            # DROP INDEX CONCURRENTLY waits for the same transactions the build waited for.
            _drop_leftover(conn, schema, iname, cleanup_timeout, error)
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout.strip())))
            dropped += 1
        retryable = isinstance(error, psycopg.errors.LockNotAvailable)
        if not retryable or attempt > retries:
            why = first_line(error)
            extra = " after dropping the invalid index it left" if leftover is not None else ""
            tries = f" (after {attempt} attempts)" if attempt > 1 else ""
            raise IndexBuildError(f"CREATE INDEX CONCURRENTLY {iname} failed{tries}: {why}"
                                  f"{extra}; nothing is left behind")
        time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
    conn.execute("RESET lock_timeout")
    valid, ready = _index_state(conn, schema, iname) or (False, False)
    if not (valid and ready):
        _drop_index(conn, schema, iname)
        raise IndexBuildError(f"index {iname} was built but is not valid/ready; dropped it")
    return IndexBuildResult(schema, tname, iname, columns, text, attempt,
                            time.monotonic() - started, valid, ready, dropped_leftovers=dropped)


def _index_info(conn: psycopg.Connection, schema: str, index: str) -> dict[str, Any] | None:
    rows = _rows(conn, "get_index_state", {"schema": schema, "index": index})
    return rows[0] if rows else None


def _index_state(conn: psycopg.Connection, schema: str, index: str) -> tuple[bool, bool] | None:
    info = _index_info(conn, schema, index)
    return (info["is_valid"], info["is_ready"]) if info else None


def _require_same_index(found: dict[str, Any], schema: str, table: str, columns: list[str],
                        name: str) -> None:
    """An existing index of that name counts as ours only when it is on the same table with the
    same key columns (and no predicate); anything else is someone else's index: refuse,
    and never drop it."""
    same = ((found["table_schema"], found["table_name"]) == (schema, table)
            and list(found["key_columns"]) == list(columns) and not found["is_partial"])
    if same:
        return
    cols = ", ".join(c or "(expression)" for c in found["key_columns"])
    what = "partial index" if found["is_partial"] else "index"
    state = "" if found["is_valid"] else " (invalid)"
    raise RefusedError(
        f"an {what} named {name} already exists on "
        f"{_display(found['table_schema'], found['table_name'])} ({cols}){state}, not on "
        f"{_display(schema, table)} ({', '.join(columns)}); choose another --name "
        "(nothing was changed)")


def _drop_leftover(conn: psycopg.Connection, schema: str, index: str, timeout: str,
                   cause: psycopg.Error) -> None:
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(timeout)))
    try:
        _drop_index(conn, schema, index)
    except psycopg.errors.LockNotAvailable:
        stmt = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {};").format(
            qualified(schema, index)).as_string(conn)
        raise IndexBuildError(
            f"CREATE INDEX CONCURRENTLY {index} failed: {first_line(cause)}; its invalid "
            f"leftover could not be dropped within {timeout} (a long transaction is still "
            f"open): run `{stmt}` once it ends (diag doctor lists it as invalid)") from None


def _drop_index(conn: psycopg.Connection, schema: str, index: str) -> None:
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified(schema, index)))


def _build_with_progress(conn, stmt, monitor, progress, poll_s) -> psycopg.Error | None:
    """Run the build; meanwhile poll its progress from a second connection."""
    error: list[psycopg.Error] = []
    done = threading.Event()
    pid = conn.info.backend_pid

    def watch() -> None:
        try:
            with monitor() as mconn:
                mconn.autocommit = True
                while not done.wait(poll_s):
                    row = _rows(mconn, "get_index_build_progress", {"pid": pid})
                    if row:
                        r = row[0]
                        progress(BuildProgress(r["phase"], r["blocks_done"] or 0,
                                               r["blocks_total"] or 0, r["tuples_done"] or 0,
                                               r["tuples_total"] or 0))
        except Exception:  # noqa: BLE001 - progress display must never break the build
            pass

    watcher = None
    if monitor is not None and progress is not None:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        conn.execute(stmt)
    except psycopg.Error as exc:
        error.append(exc)
    finally:
        done.set()
        if watcher is not None:
            watcher.join(5)
    return error[0] if error else None
