"""The person and their rows: who they are (``find_person``), the SQL that finds, counts, locks
and deletes their rows in every policy table (composed from the conditions of ``graph``), and
the retried transaction step that deletes and verifies them — shared by ``erase`` and the
ledger's re-apply.

The ids of the person travel as transaction-local custom settings (``studyhub_privacy.user_id``,
``studyhub_privacy.student_id``), set with bound parameters: statement text (including COPY,
which cannot take parameters) never carries an id, so pg_stat_statements, pg_stat_activity and
the server log never see one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from studyhub.db.privacy_policy import ROOTS
from studyhub.durations import parse_timeout
from studyhub.errors import StudyhubError
from studyhub.ops.privacy.graph import (
    Condition,
    Equals,
    PrivacyGraph,
    short_name,
    table_ident,
)
from studyhub.ops.queries import load

SETTING_PREFIX = "studyhub_privacy."
DEFAULT_LOCK_TIMEOUT = "2s"
DEFAULT_ATTEMPTS = 3
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
             psycopg.errors.SerializationFailure)


class ErasureError(StudyhubError):
    """The erasure did not happen; the transaction was rolled back."""


class PersonNotFound(StudyhubError):
    """No such student or account."""


# ----------------------------------------------------------------------------------- the person

@dataclass(frozen=True)
class Person:
    user_id: UUID
    student_id: UUID | None


def parse_uuid(value: str, what: str = "student id") -> UUID:
    try:
        return UUID(str(value).strip())
    except ValueError:
        raise StudyhubError(f"malformed {what} {value!r}: expected a UUID such as "
                            f"3f2b9c1e-8a4d-4f6b-9c2e-1d5a7b8c9e0f") from None


def check_person_args(student_id: str | UUID | None, email: str | None) -> None:
    """Exactly one of the two, well-formed (checked before connecting)."""
    if student_id and email:
        raise StudyhubError("give either --student or --email, not both")
    if not student_id and not email:
        raise StudyhubError("say whose data: --student UUID or --email ADDRESS")
    if student_id:
        parse_uuid(str(student_id))
    elif "@" not in str(email):
        raise StudyhubError("malformed --email: expected an address with an @")


def find_person(conn: psycopg.Connection, *, student_id: str | UUID | None = None,
                email: str | None = None) -> Person:
    """The account and learner ids; errors never repeat the email."""
    check_person_args(student_id, email)
    if student_id:
        sid = parse_uuid(str(student_id))
        row = conn.execute(load("get_person_by_student_id"), {"student_id": sid}).fetchone()
        if row is None:
            raise PersonNotFound(f"no student with id {sid}; nothing was changed")
    else:
        row = conn.execute(load("get_person_by_email"), {"email": email}).fetchone()
        if row is None:
            raise PersonNotFound("no account has the email given with --email; "
                                 "nothing was changed")
    return Person(row[0], row[1])


def require_idle(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise StudyhubError("the connection is inside a transaction; privacy operations run "
                            "their own (commit or roll back first)")


def database_name(conn: psycopg.Connection) -> str:
    return conn.info.dbname


def set_local(conn: psycopg.Connection, name: str, value: str) -> None:
    conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def lock_timeout_interval(value: str) -> str:
    return parse_timeout(value, what="lock timeout", max_s=60)


# ------------------------------------------------------- the SQL that reaches their rows

def param_value(param: str) -> sql.Composable:
    """The person's id, read from the transaction-local setting (never a literal)."""
    return sql.SQL("NULLIF(current_setting({}), '')::uuid").format(
        sql.Literal(SETTING_PREFIX + param))


def set_person(conn: psycopg.Connection, user_id: object, student_id: object | None) -> None:
    """Bind the person's ids for the current transaction (bound parameters, is_local=true)."""
    conn.execute(
        "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
        (SETTING_PREFIX + "user_id", str(user_id),
         SETTING_PREFIX + "student_id", "" if student_id is None else str(student_id)),
    )


def condition_sql(conds: tuple[Condition, ...], alias: str, depth: int = 0) -> sql.Composable:
    parts: list[sql.Composable] = []
    for cond in conds:
        if isinstance(cond, Equals):
            parts.append(sql.SQL("{} = {}").format(sql.Identifier(alias, cond.column),
                                                   param_value(cond.param)))
            continue
        inner = f"p{depth + 1}"
        child = [sql.Identifier(alias, c) for c in cond.fk.child_columns]
        lhs = child[0] if len(child) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(child))
        parts.append(sql.SQL("{} IN (SELECT {} FROM {} AS {} WHERE {})").format(
            lhs,
            sql.SQL(", ").join(sql.Identifier(inner, c) for c in cond.fk.parent_columns),
            table_ident(cond.fk.parent),
            sql.Identifier(inner),
            condition_sql(cond.parent_conditions, inner, depth + 1),
        ))
    if not parts:
        return sql.SQL("false")
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


def where_sql(table: str, conds: tuple[Condition, ...], alias: str = "t") -> sql.Composable:
    """The rows matching any of ``conds``. Several conditions become a TID list built from one
    index-friendly SELECT per condition (an OR across a sub-select would scan the table)."""
    if len(conds) <= 1:
        return condition_sql(conds, alias)
    return sql.SQL("{}.ctid = ANY(ARRAY({}))").format(
        sql.Identifier(alias),
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT s.ctid FROM {} AS s WHERE {}").format(
                table_ident(table), condition_sql((c,), "s"))
            for c in conds
        ),
    )


def count_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
        table_ident(table), where_sql(table, conds))


def delete_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("DELETE FROM {} AS t WHERE {}").format(
        table_ident(table), where_sql(table, conds))


def lock_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("SELECT 1 FROM {} AS t WHERE {} FOR UPDATE").format(
        table_ident(table), where_sql(table, conds))


def remaining_expr(table: str, conds: tuple[Condition, ...]) -> sql.Composable:
    """How many rows still point at the person: one indexed count per condition, summed."""
    if not conds:
        return sql.SQL("0::bigint")
    return sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM {} AS t WHERE {})").format(
            table_ident(table), condition_sql((c,), "t"))
        for c in conds
    )


def remaining_sql(tables: list[tuple[str, tuple[Condition, ...]]]) -> sql.Composed:
    """One statement, one column per table: the rows still pointing at the person."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        remaining_expr(name, conds) for name, conds in tables))


# ------------------------------------------------------ deleting and verifying, retried

def delete_person_rows(conn: psycopg.Connection, graph: PrivacyGraph, *, dry_run: bool,
                       stage: list[str]) -> dict[str, int]:
    """Lock the person's root rows (so nothing new can be attached meanwhile), then delete (or
    count) their rows table by table, children first."""
    counts: dict[str, int] = {}
    if not dry_run:
        for root in ROOTS:
            if root in graph.tables:
                stage[0] = f"locking {root}"
                conn.execute(lock_sql(root, graph.tables[root].select))
    for name in graph.erase_order:
        table = graph.tables[name]
        stage[0] = f"{'counting' if dry_run else 'deleting'} {name}"
        if dry_run:
            counts[short_name(name)] = conn.execute(count_sql(name, table.select)).fetchone()[0]
        else:
            counts[short_name(name)] = conn.execute(delete_sql(name, table.select)).rowcount
    return counts


def remaining_rows(conn: psycopg.Connection, graph: PrivacyGraph) -> dict[str, int]:
    """Rows in any policy table that still point at the person (must all be zero): one
    statement, one indexed count per way a row could point at them."""
    tables = [(name, t.verify) for name, t in graph.tables.items()]
    counts = conn.execute(remaining_sql(tables)).fetchone()
    return {short_name(name): n for (name, _), n in zip(tables, counts) if n}


def with_retries(attempts: int, what: str, run):
    """Run ``run(attempt, stage)`` (one transaction) again after a lock timeout, deadlock or
    serialization failure, with a short backoff; give up after ``attempts`` tries."""
    stage = ["starting"]
    for attempt in range(1, attempts + 1):
        try:
            return run(attempt, stage)
        except DryRunDone as done:
            return done.result
        except RETRYABLE as exc:
            kind = {"55P03": "lock timeout", "40P01": "deadlock"}.get(exc.sqlstate or "",
                                                                       "serialization failure")
            if attempt == attempts:
                raise ErasureError(
                    f"{what} gave up after {attempts} attempt(s): {kind} while {stage[0]} "
                    f"(another transaction holds a conflicting lock); rolled back, nothing was "
                    f"changed") from None
            time.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class DryRunDone(Exception):
    """Raised inside a dry run's transaction so that it is rolled back; carries the result."""

    def __init__(self, result: Any) -> None:
        self.result = result
