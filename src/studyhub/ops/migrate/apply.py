"""Applying migrations to a database (the runbook's "Running Migrations"): upgrade and
downgrade as plain functions over a profile.

Migrations connect as the app role (owner of the schema) to the server's own port — never the
transaction pooler — and run with a ``lock_timeout`` so they cannot queue the whole app behind
an ACCESS EXCLUSIVE lock they are waiting for. On a lock timeout the sessions that blocked the
attempt are named and the run is retried with backoff; an invalid index a failed attempt left
behind is dropped. ``upgrade`` and ``downgrade`` check the profile allows changes and write one
audit line however they end.
"""

from __future__ import annotations

import io
import random
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from alembic import command
from alembic.migration import MigrationContext
from psycopg import sql
from sqlalchemy.exc import DBAPIError

from studyhub.audit import audited
from studyhub.connect import ConnectError, _clean, connect, first_line, sqlalchemy_engine
from studyhub.db import migration_helpers
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.blockers import Blocker, BlockerWatcher
from studyhub.ops.migrate.gate import (
    REFUSED_BEFORE,
    GateResult,
    UnsafeMigrationError,
    audit_details,
    check_unsafe_reason,
    gate,
)
from studyhub.ops.migrate.revisions import (
    DEFAULT_LOCK_TIMEOUT,
    ExtraVersions,
    MigrationError,
    alembic_config,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of "canceling statement due to lock timeout"


@dataclass
class Attempt:
    """One try at applying migrations; ``blockers`` are the sessions seen blocking it."""

    number: int
    outcome: str  # "ok" | "lock_timeout" | "error"
    duration_s: float
    error: str | None = None
    blockers: list[Blocker] = field(default_factory=list)
    dropped_invalid_indexes: list[str] = field(default_factory=list)
    retry_in_s: float | None = None


class LockTimeoutError(MigrationError):
    """Every attempt ran into lock_timeout; ``attempts`` say who was blocking."""

    def __init__(self, message: str, attempts: list[Attempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class MigrationResult:
    profile: str
    database: str
    from_revisions: list[str]
    to_revisions: list[str]
    steps: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what migration helpers reported
    gate: GateResult | None = None  # upgrade: what the gate linted (and what was overridden)


@contextmanager
def migration_connection(profile: Profile, database: str | None = None,
                         lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> Iterator:
    """A SQLAlchemy connection to the primary's own port with lock_timeout set."""
    ep = profile.endpoint("app", database)
    if ep.via_pooler:  # pragma: no cover - endpoint('app') is always direct; kept as a guard
        raise RefusedError("migrations never run through the transaction pooler")
    engine = sqlalchemy_engine(profile, "app", database=database, poolclass=None)
    try:
        try:
            conn = engine.connect()
        except Exception as exc:  # sqlalchemy wraps psycopg's OperationalError
            raise ConnectError(
                f"cannot connect to {profile.name} ({ep.user}@{ep.host}:{ep.port}/{ep.database}): "
                f"{_root_message(exc)}"
            ) from None
        with conn:
            conn.exec_driver_sql(f"SET lock_timeout = '{_interval(lock_timeout)}'")
            conn.commit()
            yield conn
    finally:
        engine.dispose()


def _interval(value: str) -> str:
    """A lock timeout such as '5s', '500ms', '1min' (never 0: that is no timeout)."""
    try:
        return parse_timeout(value, what="lock timeout", max_s=600)
    except StudyhubError as exc:
        raise MigrationError(str(exc)) from None


def _root_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    try:
        return _clean(orig)  # type: ignore[arg-type]
    except Exception:
        return first_line(orig)


def database_heads(conn) -> list[str]:
    """The revision(s) the database on ``conn`` is at (Alembic's alembic_version)."""
    ctx = MigrationContext.configure(conn)
    return list(ctx.get_current_heads())


def current(profile: Profile, database: str | None = None) -> list[str]:
    with migration_connection(profile, database) as conn:
        return database_heads(conn)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE anywhere in an exception chain (SQLAlchemy wraps psycopg's errors)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for candidate in (cur, getattr(cur, "orig", None)):
            state = getattr(candidate, "sqlstate", None)
            if state:
                return state
        cur = cur.__cause__ or cur.__context__
    return None


def invalid_indexes(profile: Profile,
                    database: str | None = None) -> list[tuple[str, str, str, bool]]:
    """(schema, index, table, being_built) of every invalid index in the database."""
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub migrate") as conn:
        return [tuple(r) for r in conn.execute(load("get_invalid_indexes")).fetchall()]


def _drop_invalid_leftovers(profile: Profile, database: str | None, lock_timeout: str,
                            before: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Drop the invalid indexes that appeared during a failed attempt (a CREATE INDEX
    CONCURRENTLY that failed half-way) unless another session is building them. Returns
    (dropped, notes)."""
    dropped, notes = [], []
    try:
        leftovers = [r for r in invalid_indexes(profile, database)
                     if (r[0], r[1]) not in before and not r[3]]
        if not leftovers:
            return dropped, notes
        with connect(profile, "app", database=database, autocommit=True,
                     application_name="studyhub migrate") as conn:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
            for schema, index, table, _ in leftovers:
                try:
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(schema, index)))
                    dropped.append(f"{schema}.{index}")
                    notes.append(f"dropped invalid index {schema}.{index} on {table} left by a "
                                 "failed CREATE INDEX CONCURRENTLY")
                except Exception as exc:
                    notes.append(f"invalid index {schema}.{index} on {table} left by a failed "
                                 f"CREATE INDEX CONCURRENTLY could not be dropped yet "
                                 f"({first_line(exc)}); the next attempt tries again")
    except StudyhubError as exc:
        notes.append(f"could not look for invalid indexes: {exc}")
    return dropped, notes


Progress = Callable[[Attempt], None]


def _attempt(profile: Profile, fn, revision: str, database: str | None, lock_timeout: str,
             extra_versions: ExtraVersions, number: int,
             notes: list[str]) -> tuple[Attempt, list[str], list[str]]:
    """One run of Alembic on a fresh connection, watched for blockers."""
    started = time.monotonic()
    with migration_connection(profile, database, lock_timeout) as conn:
        before = database_heads(conn)
        backend_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        conn.commit()  # Alembic must own the transactions (autocommit blocks need that)
        cfg = alembic_config(extra_versions, connection=conn, lock_timeout=lock_timeout)
        buf = io.StringIO()
        with BlockerWatcher(profile, database, backend_pid) as watcher, \
                migration_helpers.collect_notes() as helper_notes:
            try:
                with redirect_stdout(buf):
                    fn(cfg, revision)
                error = None
            except Exception as exc:
                error = exc
            finally:
                notes.extend(helper_notes)
        attempt = Attempt(number, "ok", 0.0, blockers=watcher.blockers())
        if error is not None:
            try:
                conn.rollback()
            except Exception:
                pass
            attempt.outcome = "lock_timeout" if _sqlstate(error) == LOCK_NOT_AVAILABLE else "error"
            attempt.error = _error_message(error)
            attempt.duration_s = round(time.monotonic() - started, 3)
            known = (StudyhubError, migration_helpers.MigrationHelperError)
            if attempt.outcome == "error" and not isinstance(error, known) and not (
                _is_database_error(error) or error.__class__.__module__.startswith("alembic")
            ):
                raise error
            return attempt, before, []
        conn.commit()
        after = database_heads(conn)
    attempt.duration_s = round(time.monotonic() - started, 3)
    return attempt, before, after


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) or exc.__class__.__module__.startswith("psycopg")


def _error_message(exc: BaseException) -> str:
    """PostgreSQL's primary message (and DETAIL) of the error, on one line."""
    if _is_database_error(exc):
        orig = getattr(exc, "orig", None) or exc
        diag = getattr(orig, "diag", None)
        primary = getattr(diag, "message_primary", None)
        if primary:
            detail = getattr(diag, "message_detail", None)
            return primary + (f" ({detail})" if detail else "")
        return _root_message(exc)
    return first_line(exc)


def _describe_blockers(blockers: list[Blocker]) -> str:
    parts = []
    for b in blockers:
        age = f", transaction open {b.xact_age_s:.0f} s" if b.xact_age_s is not None else ""
        what = f" holding {b.held_modes} on {b.waiting_for}" if b.held_modes else ""
        parts.append(f"pid {b.pid} ({b.user_name or '?'}, {b.application_name or 'no app name'}, "
                     f"{b.state or '?'}{age}){what}")
    return "; ".join(parts)


def run_unaudited(profile: Profile, fn, revision: str, database: str | None, lock_timeout: str,
                  *, retries: int = 0, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                  on_attempt: Progress | None = None,
                  extra_versions: ExtraVersions = ()) -> MigrationResult:
    """Run Alembic's ``fn`` (command.upgrade / command.downgrade); on lock timeout wait
    (exponential backoff with jitter) and try again, up to ``retries`` more times. Each attempt
    is a new connection with ``lock_timeout`` set, watched for the sessions that block it;
    invalid indexes a failed attempt left behind are dropped.

    No profile check and no audit line: only for a throwaway database the caller owns (the
    roundtrip's, which the roundtrip audits as a whole). Everything else calls ``upgrade`` or
    ``downgrade``."""
    _interval(lock_timeout)
    if retries < 0:
        raise MigrationError("--retries cannot be negative")
    attempts: list[Attempt] = []
    notes: list[str] = []
    first_before: list[str] | None = None
    for number in range(1, retries + 2):
        invalid_before = {(r[0], r[1]) for r in invalid_indexes(profile, database)}
        attempt, before, after = _attempt(profile, fn, revision, database, lock_timeout,
                                          extra_versions, number, notes)
        if first_before is None:
            first_before = before
        attempts.append(attempt)
        if attempt.outcome == "ok":
            if on_attempt:
                on_attempt(attempt)
            result = MigrationResult(profile.name, profile.endpoint("app", database).database,
                                     first_before, after, attempts=attempts, notes=notes)
            return result
        dropped, drop_notes = _drop_invalid_leftovers(profile, database, lock_timeout,
                                                      invalid_before)
        attempt.dropped_invalid_indexes = dropped
        notes.extend(drop_notes)
        if attempt.outcome != "lock_timeout":
            if on_attempt:
                on_attempt(attempt)
            raise MigrationError(f"migration failed: {attempt.error}"
                                 + (f" ({'; '.join(drop_notes)})" if drop_notes else ""))
        if number <= retries:
            wait = min(max_backoff_s, backoff_s * 2 ** (number - 1))
            attempt.retry_in_s = round(wait * random.uniform(0.8, 1.2), 3)
        if on_attempt:
            on_attempt(attempt)
        if attempt.retry_in_s is not None:
            time.sleep(attempt.retry_in_s)
    blockers = {b.pid: b for a in attempts for b in a.blockers}
    who = _describe_blockers(list(blockers.values())) or "no blocking session was seen"
    raise LockTimeoutError(
        f"migration failed: lock timeout ({lock_timeout}) on {len(attempts)} attempt(s); "
        f"blocked by {who}",
        attempts,
    )


# --------------------------------------------------------------------------- audited entry points
def _failure_details(exc: BaseException) -> dict[str, Any]:
    """What the audit line says of a migration that failed: why (lock timeout or another
    error), the attempts and the blocking pids. The error's text never goes there (``audited``
    with ``error_text=False`` writes its class only): a PostgreSQL error can quote rows or SQL."""
    if isinstance(exc, LockTimeoutError):
        return {"reason": "lock_timeout", "attempts": len(exc.attempts),
                "blocking_pids": sorted({b.pid for a in exc.attempts for b in a.blockers})}
    if isinstance(exc, UnsafeMigrationError):  # the gate refused; nothing connected to write
        return {"reason": "lint_errors", "refused": REFUSED_BEFORE}
    return {"reason": "error"}


@contextmanager
def _audited_migration(action: str, profile: Profile, database: str | None,
                       **details: Any) -> Iterator[dict[str, Any]]:
    """One audit line: ``action`` when the block succeeds, ``action.failed`` (with
    ``_failure_details``) when it raises."""
    with audited(action, profile.name, failed_action=f"{action}.failed", error_text=False,
                 database=profile.endpoint("app", database).database, **details) as line:
        try:
            yield line
        except Exception as exc:
            line.update(_failure_details(exc))
            raise


def upgrade(profile: Profile, to: str = "head", *, database: str | None = None,
            lock_timeout: str = DEFAULT_LOCK_TIMEOUT, retries: int = 0, backoff_s: float = 1.0,
            max_backoff_s: float = 30.0, on_attempt: Progress | None = None,
            extra_versions: ExtraVersions = (),
            unsafe_reason: str | None = None) -> MigrationResult:
    """Upgrade to ``to`` (see ``run_unaudited`` for timeouts and retries). Refused before
    connecting on a read-only profile, and on production unless it was named explicitly.

    First the gate (``gate.gate``) lints the pending migrations, reading only; unacknowledged
    errors raise ``UnsafeMigrationError`` before anything connects for writing, unless
    ``unsafe_reason`` overrides them (refused on production unless named; the reason and the
    findings go to the audit line). Audited as ``migrate.up`` (revisions before and after,
    attempts, the gate) or ``migrate.up.failed`` (reason — ``lint_errors`` for the gate's
    refusal —, attempts, blocking pids)."""
    _interval(lock_timeout)  # bad input first, before anything connects
    unsafe_reason = check_unsafe_reason(profile, unsafe_reason)
    profile.require_changes_allowed(f"upgrade to {to}")
    with _audited_migration("migrate.up", profile, database, target=to) as line:
        checked = gate(profile, to, database=database, extra_versions=extra_versions,
                       unsafe_reason=unsafe_reason)
        line.update(audit_details(checked))
        if not checked.allowed:
            raise UnsafeMigrationError(checked)
        result = run_unaudited(profile, command.upgrade, to, database, lock_timeout,
                               retries=retries, backoff_s=backoff_s,
                               max_backoff_s=max_backoff_s, on_attempt=on_attempt,
                               extra_versions=extra_versions)
        result.gate = checked
        line.update(from_revisions=result.from_revisions, to_revisions=result.to_revisions,
                    attempts=len(result.attempts))
    return result


def describe_downgrade(to: str) -> str:
    """The action a downgrade to ``to`` is, in refusals and confirmations."""
    return "downgrade to base (drops the whole schema)" if to == "base" else f"downgrade to {to}"


def downgrade(profile: Profile, to: str, *, database: str | None = None,
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT, retries: int = 0,
              backoff_s: float = 1.0, on_attempt: Progress | None = None,
              extra_versions: ExtraVersions = ()) -> MigrationResult:
    """Downgrade to ``to`` (a revision, ``-N`` or ``base``). Refused like ``upgrade``; audited
    as ``migrate.down`` or ``migrate.down.failed``."""
    profile.require_changes_allowed(describe_downgrade(to))
    with _audited_migration("migrate.down", profile, database, target=to) as line:
        result = run_unaudited(profile, command.downgrade, to, database, lock_timeout,
                               retries=retries, backoff_s=backoff_s, on_attempt=on_attempt,
                               extra_versions=extra_versions)
        line.update(from_revisions=result.from_revisions, to_revisions=result.to_revisions)
    return result
