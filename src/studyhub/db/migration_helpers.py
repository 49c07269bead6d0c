"""Helpers for migration files (import them inside a revision).

Besides the ops-role grants, this is the expand / backfill / contract toolkit that
``docs/migrations.md`` describes. Every helper

- takes only short locks, or none that block the app: what needs a long scan runs outside the
  migration's transaction (Alembic's ``autocommit_block()``) under a lock mode that lets reads
  and writes go on;
- can be run again after a failure part-way (``studyhub migrate up`` retries on lock timeout,
  and an autocommit block has already committed what came before it): each step checks the
  catalog first and skips what is already done;
- renders as plain SQL in offline mode (``studyhub migrate lint`` / ``plan`` read that SQL).

What a helper did that the operator should know (an invalid index dropped, rows backfilled)
goes through :func:`report`, which ``studyhub migrate up`` shows.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Sequence

import sqlalchemy as sa
from alembic import op

OPS_ROLE = "studyhub_ops"
LOCK_NOT_AVAILABLE = "55P03"

log = logging.getLogger("studyhub.migrations")
_notes: ContextVar[list[str] | None] = ContextVar("studyhub_migration_notes", default=None)


class MigrationHelperError(Exception):
    """A helper found the database in a state it must not continue from."""


def if_role_exists(role: str, statement: str) -> str:
    """SQL that runs ``statement`` only where ``role`` exists (a managed cluster may name its
    roles differently; the migration must not fail there)."""
    role_literal = role.replace("'", "''")
    return (
        "DO $$\nBEGIN\n"
        f"    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_literal}') THEN\n"
        f"        {statement};\n"
        "    END IF;\nEND\n$$"
    )


def grant_to_ops(statement_template: str) -> str:
    """``grant_to_ops("GRANT SELECT ON ops.x TO {role}")`` → guarded GRANT for the ops role."""
    return if_role_exists(OPS_ROLE, statement_template.format(role=OPS_ROLE))


# --------------------------------------------------------------------------- reporting
@contextmanager
def collect_notes() -> Iterator[list[str]]:
    """Collect what helpers :func:`report` while migrations run (used by ops.migrate)."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def report(message: str) -> None:
    notes = _notes.get()
    if notes is not None:
        notes.append(message)
    log.info(message)


# --------------------------------------------------------------------------- internals
def _offline() -> bool:
    return bool(op.get_context().as_sql)


def _quote(name: str) -> str:
    return op.get_context().dialect.identifier_preparer.quote(name)


def _qualified(table: str, schema: str | None) -> str:
    return f"{_quote(schema)}.{_quote(table)}" if schema else _quote(table)


def _scalar(sql: str, **params):
    return op.get_bind().execute(sa.text(sql), params).scalar()


def _index_state(name: str, schema: str | None) -> bool | None:
    """True: a valid index of that name exists; False: an invalid one; None: none."""
    return _scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = :name AND n.nspname = coalesce(:schema, current_schema())",
        name=name, schema=schema,
    )


def _constraint_state(table: str, name: str, schema: str | None) -> bool | None:
    """True: constraint exists and is validated; False: exists NOT VALID; None: absent."""
    return _scalar(
        "SELECT c.convalidated FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE c.conname = :name AND t.relname = :table "
        "AND n.nspname = coalesce(:schema, current_schema())",
        name=name, table=table, schema=schema,
    )


def _column_not_null(table: str, column: str, schema: str | None) -> bool | None:
    return _scalar(
        "SELECT a.attnotnull FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE t.relname = :table AND a.attname = :column AND NOT a.attisdropped "
        "AND n.nspname = coalesce(:schema, current_schema())",
        table=table, column=column, schema=schema,
    )


def _is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


# --------------------------------------------------------------------------- indexes
def create_index_concurrently(name: str, table: str, columns: Sequence[str], *,
                              unique: bool = False, where: str | None = None,
                              schema: str | None = None) -> None:
    """``CREATE INDEX CONCURRENTLY`` outside the migration's transaction (SHARE UPDATE
    EXCLUSIVE: reads and writes go on), then check the index is valid.

    A failed concurrent build (lock timeout, duplicate key, cancel) leaves an INVALID index
    behind that is still maintained on every write and that ``IF NOT EXISTS`` would silently
    keep. This helper drops such a leftover before building, and drops its own leftover when
    the build fails, and says so."""
    with op.get_context().autocommit_block():
        if not _offline():
            state = _index_state(name, schema)
            if state is True:
                report(f"index {name} already exists and is valid; not rebuilt")
                return
            if state is False:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(name, schema)}")
                report(f"dropped invalid index {name} left by an earlier failed build")
        try:
            op.create_index(name, table, list(columns), unique=unique, schema=schema,
                            postgresql_concurrently=True,
                            postgresql_where=sa.text(where) if where else None)
        except Exception:
            if not _offline() and _index_state(name, schema) is False:
                try:
                    op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(name, schema)}")
                    report(f"CREATE INDEX CONCURRENTLY {name} failed; dropped the invalid "
                           "index it left behind")
                except Exception:
                    report(f"CREATE INDEX CONCURRENTLY {name} failed and left an invalid index "
                           "that could not be dropped yet; the next run drops it first")
            raise
        if not _offline():
            if _index_state(name, schema) is not True:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(name, schema)}")
                report(f"index {name} was built but is not valid; dropped it")
                raise MigrationHelperError(f"index {name} is invalid after its build; dropped")
            report(f"index {name} built concurrently and valid")


def drop_index_concurrently(name: str, *, table: str | None = None,
                            schema: str | None = None) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS`` outside the transaction (no ACCESS EXCLUSIVE)."""
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, schema=schema, postgresql_concurrently=True,
                      if_exists=True)


# --------------------------------------------------------------------------- constraints
def add_check_not_valid(table: str, name: str, condition: str, *,
                        schema: str | None = None) -> None:
    """``ADD CONSTRAINT … CHECK (…) NOT VALID`` in the migration's transaction: a brief ACCESS
    EXCLUSIVE lock and no scan; new and updated rows are checked from now on."""
    if not _offline() and _constraint_state(table, name, schema) is not None:
        return
    op.execute(f"ALTER TABLE {_qualified(table, schema)} ADD CONSTRAINT {_quote(name)} "
               f"CHECK ({condition}) NOT VALID")


def add_foreign_key_not_valid(table: str, name: str, columns: Sequence[str], ref_table: str,
                              ref_columns: Sequence[str], *, ondelete: str | None = None,
                              schema: str | None = None, ref_schema: str | None = None) -> None:
    """``ADD CONSTRAINT … FOREIGN KEY … NOT VALID`` (brief SHARE ROW EXCLUSIVE on both tables,
    no scan). Follow with :func:`validate_constraint`."""
    if not _offline() and _constraint_state(table, name, schema) is not None:
        return
    cols = ", ".join(_quote(c) for c in columns)
    refs = ", ".join(_quote(c) for c in ref_columns)
    on_delete = f" ON DELETE {ondelete}" if ondelete else ""
    op.execute(
        f"ALTER TABLE {_qualified(table, schema)} ADD CONSTRAINT {_quote(name)} FOREIGN KEY "
        f"({cols}) REFERENCES {_qualified(ref_table, ref_schema)} ({refs}){on_delete} NOT VALID"
    )


def validate_constraint(table: str, name: str, *, schema: str | None = None) -> None:
    """``VALIDATE CONSTRAINT`` in its own transaction: scans the table under SHARE UPDATE
    EXCLUSIVE, which lets reads and writes go on (the NOT VALID step's lock is released)."""
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE {_qualified(table, schema)} VALIDATE CONSTRAINT {_quote(name)}")


def add_not_null(table: str, column: str, *, schema: str | None = None,
                 check_name: str | None = None) -> None:
    """``SET NOT NULL`` without scanning under ACCESS EXCLUSIVE (PostgreSQL 12+):

    1. ``CHECK (column IS NOT NULL) NOT VALID`` — brief lock, no scan;
    2. ``VALIDATE CONSTRAINT`` — scan under SHARE UPDATE EXCLUSIVE (reads and writes go on);
    3. ``SET NOT NULL`` — brief ACCESS EXCLUSIVE, no scan: the valid CHECK proves it;
    4. drop the now redundant CHECK.
    Steps 3 and 4 run in the transaction that ends the migration."""
    check = check_name or f"ck_{table}_{column}_not_null"
    if not _offline() and _column_not_null(table, column, schema):
        report(f"{table}.{column} is already NOT NULL")
    else:
        add_check_not_valid(table, check, f"{_quote(column)} IS NOT NULL", schema=schema)
        validate_constraint(table, check, schema=schema)
        op.execute(f"ALTER TABLE {_qualified(table, schema)} ALTER COLUMN {_quote(column)} "
                   "SET NOT NULL")
    op.execute(f"ALTER TABLE {_qualified(table, schema)} DROP CONSTRAINT IF EXISTS "
               f"{_quote(check)}")


# --------------------------------------------------------------------------- backfill
def backfill_in_batches(table: str, *, set_sql: str, where_sql: str, key: str = "id",
                        batch_size: int = 5000, pause_s: float = 0.0,
                        schema: str | None = None, lock_retries: int = 5) -> int:
    """``UPDATE table SET <set_sql> WHERE <where_sql>`` in batches of ``batch_size`` rows, each
    batch its own committed transaction (outside the migration's transaction), walking the
    primary key ``key`` so no batch re-reads the rows before it. Row locks are held for one
    batch only, so concurrent writers wait for at most one batch; a batch that hits the
    lock_timeout is retried. ``where_sql`` must become false once a row is done (e.g.
    ``recorded_at IS NULL``) so a rerun resumes. Returns the number of rows updated.

    In offline mode (lint, plan) it renders the first batch's statement."""
    qt, qk = _qualified(table, schema), _quote(key)
    select_ids = (f"SELECT {qk} FROM {qt} WHERE {{bound}}({where_sql}) "
                  f"ORDER BY {qk} LIMIT {int(batch_size)}")
    template = (
        f"WITH batch AS ({select_ids}), "
        f"done AS (UPDATE {qt} AS t SET {set_sql} FROM batch WHERE t.{qk} = batch.{qk} "
        f"RETURNING 1) "
        f"SELECT (SELECT {qk} FROM batch ORDER BY {qk} DESC LIMIT 1) AS last_key, "
        f"(SELECT count(*) FROM done) AS updated"
    )
    first = template.format(bound="")
    following = template.format(bound=f"{qk} > :last AND ")
    with op.get_context().autocommit_block():
        if _offline():
            op.execute(f"/* studyhub backfill: batches of {int(batch_size)} rows, each its own "
                       f"transaction, until none is left */ {first}")
            return 0
        bind = op.get_bind()
        last = None
        total = batches = 0
        slowest = 0.0
        while True:
            for attempt in range(lock_retries + 1):
                started = time.monotonic()
                try:
                    row = bind.execute(sa.text(first if last is None else following),
                                       {"last": last}).one()
                    break
                except Exception as exc:
                    if not _is_lock_timeout(exc) or attempt == lock_retries:
                        raise
                    time.sleep(min(0.1 * 2 ** attempt, 2.0))
            slowest = max(slowest, time.monotonic() - started)
            if row.last_key is None:
                break
            last = row.last_key
            total += int(row.updated)
            batches += 1
            if pause_s:
                time.sleep(pause_s)
    report(f"backfilled {total} row(s) of {table} in {batches} batch(es) of up to "
           f"{int(batch_size)}; slowest batch {slowest:.3f} s")
    return total
