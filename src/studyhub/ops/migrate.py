"""Alembic as plain functions over a profile (the runbook's "Running Migrations").

Migrations connect as the app role (owner of the schema) to the server's own port — never the
transaction pooler — and run with a ``lock_timeout`` so they cannot queue the whole app behind
an ACCESS EXCLUSIVE lock they are waiting for.
"""

from __future__ import annotations

import io
import random
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from studyhub.connect import ConnectError, connect, first_line, sqlalchemy_engine
from studyhub.db import migration_helpers
from studyhub.db.models import Base, include_name
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.blockers import Blocker, BlockerWatcher
from studyhub.ops.queries import load
from studyhub.profiles import Profile

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "db" / "migrations"
DEFAULT_LOCK_TIMEOUT = "5s"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of "canceling statement due to lock timeout"

# Extra directories of migration files on top of the chain (a draft being tried, or the
# example migrations of the tests); empty for normal use.
ExtraVersions = Sequence[Path | str]


class MigrationError(StudyhubError):
    pass


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


@dataclass
class RevisionInfo:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool
    path: str


@dataclass
class DriftReport:
    database: str
    current: list[str]
    head: list[str]
    differences: list[str]

    @property
    def drift(self) -> bool:
        return bool(self.differences) or sorted(self.current) != sorted(self.head)


def alembic_config(extra_versions: ExtraVersions = (), **attributes: object) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    import os

    locations = [str(MIGRATIONS_DIR / "versions"), *(str(Path(p)) for p in extra_versions)]
    cfg.set_main_option("version_locations", os.pathsep.join(locations))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    cfg.attributes.update(attributes)
    return cfg


def script_directory(extra_versions: ExtraVersions = ()) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(extra_versions))


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
    from studyhub.connect import _clean

    try:
        return _clean(orig)  # type: ignore[arg-type]
    except Exception:
        return first_line(orig)


def _db_heads(conn) -> list[str]:
    ctx = MigrationContext.configure(conn)
    return list(ctx.get_current_heads())


def current(profile: Profile, database: str | None = None) -> list[str]:
    with migration_connection(profile, database) as conn:
        return _db_heads(conn)


def heads(extra_versions: ExtraVersions = ()) -> list[str]:
    return list(script_directory(extra_versions).get_heads())


def history(extra_versions: ExtraVersions = ()) -> list[RevisionInfo]:
    script = script_directory(extra_versions)
    head_set = set(script.get_heads())
    out = []
    for rev in script.walk_revisions():
        down = rev.down_revision
        out.append(
            RevisionInfo(
                revision=rev.revision,
                down_revision=down if isinstance(down, str) or down is None else ",".join(down),
                message=(rev.doc or "").strip(),
                is_head=rev.revision in head_set,
                path=_display_path(rev.path),
            )
        )
    return out


def _display_path(path: str | None) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(MIGRATIONS_DIR.parent.parent.parent.parent))
    except ValueError:  # an extra versions directory outside the source tree
        return str(path)


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


def invalid_indexes(profile: Profile, database: str | None = None) -> list[tuple[str, str, str, bool]]:
    """(schema, index, table, being_built) of every invalid index in the database."""
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub migrate") as conn:
        return [tuple(r) for r in conn.execute(load("get_invalid_indexes")).fetchall()]


def _drop_invalid_leftovers(profile: Profile, database: str | None, lock_timeout: str,
                            before: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Drop the invalid indexes that appeared during a failed attempt (a CREATE INDEX
    CONCURRENTLY that failed half-way) unless another session is building them. Returns
    (dropped, notes)."""
    from psycopg import sql

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
        before = _db_heads(conn)
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
        after = _db_heads(conn)
    attempt.duration_s = round(time.monotonic() - started, 3)
    return attempt, before, after


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError

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


def _run(profile: Profile, fn, revision: str, database: str | None, lock_timeout: str,
         *, retries: int = 0, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
         on_attempt: Progress | None = None,
         extra_versions: ExtraVersions = ()) -> MigrationResult:
    """Run Alembic; on lock timeout wait (exponential backoff with jitter) and try again, up to
    ``retries`` more times. Each attempt is a new connection with ``lock_timeout`` set, watched
    for the sessions that block it; invalid indexes a failed attempt left behind are dropped."""
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


def upgrade(profile: Profile, to: str = "head", *, database: str | None = None,
            lock_timeout: str = DEFAULT_LOCK_TIMEOUT, retries: int = 0, backoff_s: float = 1.0,
            max_backoff_s: float = 30.0, on_attempt: Progress | None = None,
            extra_versions: ExtraVersions = ()) -> MigrationResult:
    return _run(profile, command.upgrade, to, database, lock_timeout, retries=retries,
                backoff_s=backoff_s, max_backoff_s=max_backoff_s, on_attempt=on_attempt,
                extra_versions=extra_versions)


def downgrade(profile: Profile, to: str, *, database: str | None = None,
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT, retries: int = 0,
              backoff_s: float = 1.0, on_attempt: Progress | None = None,
              extra_versions: ExtraVersions = ()) -> MigrationResult:
    return _run(profile, command.downgrade, to, database, lock_timeout, retries=retries,
                backoff_s=backoff_s, on_attempt=on_attempt, extra_versions=extra_versions)


def render_sql(rev_range: str = "base:head", lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
               extra_versions: ExtraVersions = ()) -> str:
    """The SQL the migrations would run (Alembic offline mode), without touching a database."""
    cfg = alembic_config(extra_versions, lock_timeout=lock_timeout)
    buf = io.StringIO()
    cfg.output_buffer = buf
    start, _, end = rev_range.partition(":")
    if start and end and _is_downgrade(start, end):
        command.downgrade(cfg, rev_range, sql=True)
    else:
        command.upgrade(cfg, rev_range, sql=True)
    return buf.getvalue()


def _is_downgrade(start: str, end: str) -> bool:
    if end == "base" or end.startswith("-"):
        return True
    return False


def compare(profile: Profile, database: str | None = None) -> DriftReport:
    """Models vs the database's schema, after checking the database is at head."""
    with migration_connection(profile, database) as conn:
        cur = _db_heads(conn)
        cfg = alembic_config(connection=conn)
        script = ScriptDirectory.from_config(cfg)
        diffs: list[str] = []
        with EnvironmentContext(cfg, script):
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "target_metadata": Base.metadata,
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_schemas": True,
                    "include_name": include_name,
                },
            )
            for diff in compare_metadata(ctx, Base.metadata):
                diffs.append(_describe_diff(diff))
        conn.rollback()
    return DriftReport(profile.endpoint("app", database).database, cur, heads(), diffs)


def _describe_diff(diff) -> str:
    if isinstance(diff, list):  # modify_* groups come as lists of tuples
        return "; ".join(_describe_diff(d) for d in diff)
    kind = diff[0]
    rest = diff[1:]
    names = []
    for item in rest:
        name = getattr(item, "name", None)
        if name:
            table = getattr(getattr(item, "table", None), "name", None)
            names.append(f"{table}.{name}" if table and table != name else str(name))
        elif isinstance(item, str):
            names.append(item)
    return f"{kind} {' '.join(names)}".strip()


def new_revision(profile: Profile, message: str, *, autogenerate: bool = True) -> list[str]:
    """Autogenerate a revision from the models against the profile's (up-to-date) database."""
    if not message.strip():
        raise MigrationError("a revision needs a message (-m)")
    with migration_connection(profile) as conn:
        cur = _db_heads(conn)
        if sorted(cur) != sorted(heads()):
            raise RefusedError(
                f"the database is at {', '.join(cur) or 'base'}, not at head "
                f"({', '.join(heads()) or 'base'}); run `studyhub migrate up` first"
            )
        cfg = alembic_config(connection=conn)
        buf = io.StringIO()
        with redirect_stdout(buf):
            scripts = command.revision(
                cfg, message=message, autogenerate=autogenerate, rev_id=next_revision_id()
            )
        conn.rollback()
    if not isinstance(scripts, list):
        scripts = [scripts]
    return [s.path for s in scripts if s is not None]


def next_revision_id() -> str:
    """Revisions are numbered 0001, 0002 ... so files sort in the order they apply."""
    numbers = [int(r.revision) for r in history() if r.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def downgrade_plan(current_revisions: list[str], to: str) -> list[RevisionInfo]:
    """The revisions a downgrade from ``current_revisions`` to ``to`` would undo, newest first.
    ``to`` is a revision (prefix allowed), ``-N`` or ``base``."""
    if not current_revisions:
        return []
    if len(current_revisions) > 1:
        raise MigrationError("the database has several heads; downgrade one branch with --to REV")
    by_rev = {r.revision: r for r in history()}
    chain: list[RevisionInfo] = []
    rev: str | None = current_revisions[0]
    while rev is not None:
        info = by_rev.get(rev)
        if info is None:
            raise MigrationError(f"the database is at {rev}, which no migration file defines")
        chain.append(info)
        rev = info.down_revision
    if to == "base":
        return chain
    if to.startswith("-"):
        try:
            steps = int(to[1:])
        except ValueError:
            raise MigrationError(f"invalid relative revision {to!r} (use e.g. -1)") from None
        if steps < 1 or steps > len(chain):
            raise MigrationError(f"cannot go {to}: only {len(chain)} migration(s) applied")
        return chain[:steps]
    for i, info in enumerate(chain):
        if info.revision.startswith(to):
            return chain[:i]
    raise MigrationError(f"revision {to!r} is not below the database's current revision")
