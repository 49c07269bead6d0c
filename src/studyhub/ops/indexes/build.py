"""``create-index``: CREATE INDEX CONCURRENTLY done safely, and the one path every renderer
takes to it (``build_index``): the profile's rule for changes, the app role's connection on the
server's own port (never the pooler), the table name read by PostgreSQL's own rules, the build
with lock_timeout, retries, clean-up of an invalid leftover and progress (read as the ops role),
and one audit line however it ends.

Building an index needs the table's owner (the app role).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import connect, first_line
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.indexes.findings import _display, _rows, create_index_sql, index_name, qualified
from studyhub.profiles import Profile

APP_NAME = "studyhub create-index"


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


# ------------------------------------------------------------------------ the table's name
def qualified_name(schema: str, table: str) -> str:
    """``schema.table`` written as SQL (each part quoted): the form a page or a recommendation
    hands back to ``build_index``, read back exactly by ``parse_table_name``."""
    return sql.Identifier(schema, table).as_string(None)


def parse_table_name(conn: psycopg.Connection, text: str) -> tuple[str, str]:
    """(schema, table) of a table name as a person typed it, read by PostgreSQL's own rules
    (``parse_ident``): unquoted parts fold to lower case (``Public.Notes`` is public.notes),
    quoted ones are kept as written (``"My.Notes"`` is one name with a dot); one part is a
    table of schema public, two are schema and table, more are refused with one line. Text
    that is not SQL name syntax at all (``my notes``) is one table name, exactly as typed."""
    if not text or not text.strip():
        raise StudyhubError("name the table to index")
    try:
        with conn.transaction():  # a savepoint when the caller is inside a transaction
            parts = conn.execute("SELECT parse_ident(%s)", (text,)).fetchone()[0]
    except psycopg.errors.InvalidParameterValue:  # "string is not a valid identifier"
        return "public", text
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise StudyhubError(f"{text} names {len(parts)} parts ({'.'.join(parts)}); give table or "
                        "schema.table (quote a name that holds a dot)")


def check_index_target(conn: psycopg.Connection, table: str,
                       columns: list[str]) -> tuple[str, str]:
    """(schema, table) when ``table`` (``parse_table_name``) exists and has every one of
    ``columns`` (at least one); otherwise StudyhubError naming what is wrong (and the columns
    it does have)."""
    _require_columns(columns)
    schema, tname = parse_table_name(conn, table)
    known = [r["column"] for r in _rows(conn, "get_table_columns", {"schema": schema, "table": tname})]
    if not known:
        raise StudyhubError(f"no table {schema}.{tname}")
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise StudyhubError(f"table {_display(schema, tname)} has no column(s) "
                            f"{', '.join(unknown)}; it has {', '.join(known)}")
    return schema, tname


def _require_columns(columns: list[str]) -> None:
    if not columns or not all(c.strip() for c in columns):
        raise StudyhubError("name at least one column to index")


@dataclass
class IndexPlan:
    """What a build would run: the table as PostgreSQL reads its typed name, the columns, the
    index name (given, or ``index_name``'s default) and the statement."""

    schema: str
    table: str
    columns: list[str]
    index: str
    statement: str  # CREATE INDEX CONCURRENTLY … (no semicolon)

    @property
    def target(self) -> str:
        """``schema.table`` as audit lines and pages show it."""
        return f"{self.schema}.{self.table}"

    @property
    def table_sql(self) -> str:
        """The table as SQL (quoted), for handing the plan's table back to ``build_index``."""
        return qualified_name(self.schema, self.table)


def plan_index(conn: psycopg.Connection, table: str, columns: list[str],
               name: str | None = None, *, check: bool = True) -> IndexPlan:
    """The plan for building an index on ``table`` (as typed: ``parse_table_name``); with
    ``check`` the table and every column must exist (``check_index_target``), without it
    (a dry run) only the name is read."""
    columns = list(columns)
    if check:
        schema, tname = check_index_target(conn, table, columns)
    else:
        _require_columns(columns)
        schema, tname = parse_table_name(conn, table)
    iname = name or index_name(tname, columns)
    statement = create_index_sql(schema, tname, columns, iname).as_string(conn)
    return IndexPlan(schema, tname, columns, iname, statement)


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
    plan = plan_index(conn, table, columns, name)
    return _build(conn, plan, lock_timeout=lock_timeout, retries=retries, monitor=monitor,
                  progress=progress, poll_s=poll_s, cleanup_timeout=cleanup_timeout)


def _build(conn: psycopg.Connection, plan: IndexPlan, *, lock_timeout: str, retries: int,
           monitor: Callable[[], psycopg.Connection] | None,
           progress: Callable[[BuildProgress], None] | None, poll_s: float = 0.5,
           cleanup_timeout: str = "60s") -> IndexBuildResult:
    """``create_index``'s work once the plan is made (``conn`` checked, names resolved)."""
    schema, tname, columns, iname = plan.schema, plan.table, plan.columns, plan.index
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


# ------------------------------------------------------------------------ every renderer's path
def build_index(profile: Profile, table: str, columns: list[str], *, name: str | None = None,
                database: str | None = None, lock_timeout: str = "5s", retries: int = 3,
                progress: Callable[[BuildProgress], None] | None = None,
                before_build: Callable[[IndexPlan], None] | None = None,
                application_name: str = APP_NAME,
                audit: dict[str, Any] | None = None) -> IndexBuildResult:
    """Build an index on ``table`` (as typed) the one way every renderer does: the profile's
    rule for changes first (``Profile.require_changes_allowed``), then the app role's autocommit
    connection, refused when it reaches the transaction pooler; the plan (``plan_index``: the
    name read by PostgreSQL, the table and columns checked) goes to ``before_build`` (a
    renderer's confirmation: raise to stop, nothing is built); then ``create_index`` with its
    progress read by the ops role on a second connection.

    A request refused before the build starts changes nothing and is not audited; a build that
    starts writes one audit line ``diag.create_index`` however it ends (``audit``: more fields,
    e.g. where the request came from), a failed one with ``ok: false`` and the error's type
    only (a driver's message may quote key values)."""
    profile.require_changes_allowed(f"build an index on {table}")
    pooler_ports = {profile.pooler_port} if profile.pooler_port else set()
    with connect(profile, "app", database=database, autocommit=True,
                 application_name=application_name) as conn:
        ensure_outside_transaction(conn, pooler_ports)
        plan = plan_index(conn, table, columns, name)
        if before_build is not None:
            before_build(plan)
        with audited("diag.create_index", profile.name, error_text=False, table=plan.target,
                     index=plan.index, columns=plan.columns, **(audit or {})) as line:
            try:
                result = _build(conn, plan, lock_timeout=lock_timeout, retries=retries,
                                monitor=lambda: connect(
                                    profile, "ops", database=database, autocommit=True,
                                    application_name=application_name + " progress"),
                                progress=progress)
            except BaseException:
                line["ok"] = False
                raise
            line.update(attempts=result.attempts, already_existed=result.already_existed,
                        duration_s=round(result.duration_s, 2))
    return result


