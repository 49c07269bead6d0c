"""Alembic as plain functions over a profile (the runbook's "Running Migrations").

Migrations connect as the app role (owner of the schema) to the server's own port — never the
transaction pooler — and run with a ``lock_timeout`` so they cannot queue the whole app behind
an ACCESS EXCLUSIVE lock they are waiting for.
"""

from __future__ import annotations

import io
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from studyhub.connect import ConnectError, first_line, sqlalchemy_engine
from studyhub.db.models import Base, include_name
from studyhub.errors import RefusedError, StudyhubError
from studyhub.profiles import Profile

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "db" / "migrations"
DEFAULT_LOCK_TIMEOUT = "5s"


class MigrationError(StudyhubError):
    pass


@dataclass
class MigrationResult:
    profile: str
    database: str
    from_revisions: list[str]
    to_revisions: list[str]
    steps: list[str] = field(default_factory=list)


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


def alembic_config(**attributes: object) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    cfg.attributes.update(attributes)
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


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
    """Validate a PostgreSQL duration such as '5s', '500ms', '2min'."""
    import re

    if not re.fullmatch(r"\d+\s*(ms|s|min|h)?", value.strip()):
        raise MigrationError(f"invalid lock timeout {value!r} (use e.g. 5s, 500ms, 1min)")
    return value.strip()


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


def heads() -> list[str]:
    return list(script_directory().get_heads())


def history() -> list[RevisionInfo]:
    script = script_directory()
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
                path=str(Path(rev.path).relative_to(MIGRATIONS_DIR.parent.parent.parent.parent))
                if rev.path
                else "",
            )
        )
    return out


def _run(profile: Profile, fn, revision: str, database: str | None, lock_timeout: str,
         sql_only: bool = False) -> MigrationResult:
    with migration_connection(profile, database, lock_timeout) as conn:
        before = _db_heads(conn)
        cfg = alembic_config(connection=conn, lock_timeout=lock_timeout)
        buf = io.StringIO()
        try:
            with redirect_stdout(buf):
                fn(cfg, revision)
        except Exception as exc:
            conn.rollback()
            from sqlalchemy.exc import DBAPIError

            if isinstance(exc, DBAPIError) or exc.__class__.__module__.startswith("psycopg"):
                raise MigrationError(f"migration failed: {_root_message(exc)}") from None
            if exc.__class__.__module__.startswith("alembic"):
                raise MigrationError(first_line(exc)) from None
            raise
        conn.commit()
        after = _db_heads(conn)
    return MigrationResult(profile.name, profile.endpoint("app", database).database, before, after)


def upgrade(profile: Profile, to: str = "head", *, database: str | None = None,
            lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> MigrationResult:
    return _run(profile, command.upgrade, to, database, lock_timeout)


def downgrade(profile: Profile, to: str, *, database: str | None = None,
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> MigrationResult:
    return _run(profile, command.downgrade, to, database, lock_timeout)


def render_sql(rev_range: str = "base:head", lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> str:
    """The SQL the migrations would run (Alembic offline mode), without touching a database."""
    cfg = alembic_config(lock_timeout=lock_timeout)
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
