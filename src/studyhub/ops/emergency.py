"""Emergency query control: cancel / terminate backends and "kill all", made safe.

Rules (the runbook's "kill all connections except your own" also killed replication):
- never our own backends, walsenders (replication) or consumers of replication slots,
  autovacuum and other background workers;
- other databases' backends and walsenders only when explicitly asked (single PIDs);
- sessions of the ops role only with ``include_ops``;
- every signal writes an audit line with the query's fingerprint (pg_stat_activity.query_id,
  or a hash of the normalized text), never the text.

Signalling needs ``pg_signal_backend`` (the ops role has it). Blocking new connections needs the
database's owner (the app role): ``ALTER DATABASE … CONNECTION LIMIT 0``, which PostgreSQL lets
a non-superuser owner run and which still admits superusers (so an administrator can always get
in). The previous limit is recorded in a state file first, so ``unblock`` can undo a crashed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import ConnectError, connect, first_line
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import activity
from studyhub.ops.queries import load
from studyhub.paths import studyhub_home
from studyhub.profiles import Profile

ACTIONS = ("cancel", "terminate")


class PrivilegeMissing(StudyhubError):
    pass


def require_database(conn: psycopg.Connection, database: str) -> None:
    """One line and nothing done when ``database`` does not exist on the server."""
    if conn.execute(load("get_database_connection_limit"), {"database": database}).fetchone() is None:
        raise StudyhubError(f"no database {database} on this server (nothing was changed)")


def ensure_can_signal(conn: psycopg.Connection) -> None:
    row = conn.execute(load("get_signal_privilege")).fetchone()
    if not row or not (row[0] or row[1]):
        raise PrivilegeMissing(
            f"role {conn.info.user} is not a member of pg_signal_backend, so it cannot cancel or "
            f"terminate other roles' queries; an administrator can run: GRANT pg_signal_backend "
            f"TO {conn.info.user};  (nothing was changed)")


_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\$\d+")


def fingerprint(session: activity.Session) -> str | None:
    """What identifies the query without its text: ``qid:<query_id>`` when the server computes
    query ids (compute_query_id), else ``sha:<first 16 hex of sha256(normalized text)>``."""
    if session.query_id:
        return f"qid:{session.query_id}"
    if not session.query:
        return None
    normalized = " ".join(_LITERALS.sub("?", session.query.lower()).split())
    return "sha:" + hashlib.sha256(normalized.encode()).hexdigest()[:16]


@dataclass
class Target:
    pid: int
    database: str | None
    role: str | None
    application: str
    backend_type: str
    state: str
    age_s: float | None
    fingerprint: str | None
    backend_start: datetime | None = None

    @classmethod
    def of(cls, s: activity.Session) -> "Target":
        return cls(s.pid, s.database, s.role, s.application, s.backend_type, s.state, s.age_s,
                   fingerprint(s), s.backend_start)


@dataclass
class Spared:
    target: Target
    reason: str


@dataclass
class Outcome:
    pid: int
    action: str
    ok: bool
    result: str
    fingerprint: str | None


def plan_signal(conn: psycopg.Connection, pids: list[int], *, other_databases: bool = False,
                replication: bool = False) -> list[Target]:
    """Validate every PID before touching any: unknown, our own, walsenders and other
    databases' backends (unless allowed) are refused with one line, nothing signalled."""
    if not pids:
        raise StudyhubError("name at least one PID")
    by_pid = {s.pid: s for s in activity.sessions(conn)}
    here = conn.info.dbname
    targets = []
    for pid in dict.fromkeys(pids):
        s = by_pid.get(pid)
        if s is None:
            raise StudyhubError(f"no backend with PID {pid} (nothing was changed)")
        if s.is_self:
            raise RefusedError(f"PID {pid} is this command's own session (nothing was changed)")
        if s.backend_type == "walsender" and not replication:
            raise RefusedError(f"PID {pid} is a replication connection (walsender), spared "
                               "unless replication is named explicitly (the CLI's "
                               "--replication; the dashboard never does); nothing was changed")
        if s.backend_type not in ("client backend", "walsender"):
            raise RefusedError(f"PID {pid} is a server process ({s.backend_type}), not a client "
                               "session (nothing was changed)")
        if s.backend_type == "client backend" and s.database != here and not other_databases:
            raise RefusedError(f"PID {pid} is connected to database {s.database}, not {here}; "
                               "add --other-databases to signal it (nothing was changed)")
        targets.append(Target.of(s))
    return targets


def require_same_session(target: Target, confirmed_start: str) -> None:
    """Refuse when PID ``target.pid`` is no longer the session the operator confirmed: its
    backend start (ISO 8601, as the confirmation showed it; empty when it had none) differs, so
    the PID now belongs to another session (PIDs are reused)."""
    seen = target.backend_start.isoformat() if target.backend_start else ""
    if confirmed_start != seen:
        raise RefusedError(f"PID {target.pid} is now a different session than the one you "
                           "confirmed (nothing was changed)")


def _still_there(conn: psycopg.Connection, t: Target) -> activity.Session | None:
    for s in activity.sessions(conn):
        if s.pid == t.pid and (t.backend_start is None or s.backend_start == t.backend_start):
            return s
    return None


def signal(conn: psycopg.Connection, targets: list[Target], action: str, *, profile: str,
           wait_s: float = 5.0, audit_action: str | None = None,
           audit_extra: dict | None = None) -> list[Outcome]:
    """Cancel or terminate each target, check what happened, and audit each one
    (``audit_extra``: more fields for each audit line, e.g. where the request came from)."""
    if action not in ACTIONS:
        raise StudyhubError(f"unknown action {action!r}")
    ensure_can_signal(conn)
    outcomes = []
    for t in targets:
        with audited(audit_action or f"emergency.{action}", profile, pid=t.pid,
                     database=t.database, role=t.role, backend_type=t.backend_type,
                     state=t.state, age_s=None if t.age_s is None else round(t.age_s, 1),
                     fingerprint=t.fingerprint, **(audit_extra or {})) as line:
            line["ok"] = False
            current = _still_there(conn, t)
            if current is None:
                outcomes.append(Outcome(t.pid, action, True, "already gone", t.fingerprint))
            else:
                outcomes.append(_signal_one(conn, t, current, action, wait_s))
            line.update(ok=outcomes[-1].ok, result=outcomes[-1].result)
    return outcomes


def _signal_one(conn, t: Target, before: activity.Session, action: str, wait_s: float) -> Outcome:
    try:
        if action == "terminate":
            done = conn.execute(load("do_terminate_backend"),
                                {"pid": t.pid, "timeout_ms": int(wait_s * 1000)}).fetchone()[0]
            if done:
                return Outcome(t.pid, action, True, "terminated", t.fingerprint)
            return Outcome(t.pid, action, False, f"signalled, still running after {wait_s:g}s",
                           t.fingerprint)
        sent = conn.execute(load("do_cancel_backend"), {"pid": t.pid}).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege as exc:
        why = "it belongs to a superuser" if before.is_superuser else first_line(exc)
        return Outcome(t.pid, action, False, f"not permitted: {why}", t.fingerprint)
    except psycopg.errors.QueryCanceled:  # pg_terminate_backend's wait timed out
        return Outcome(t.pid, action, False, "signalled, did not exit in time", t.fingerprint)
    if not sent:
        return Outcome(t.pid, action, False, "signal not sent (process gone?)", t.fingerprint)
    if before.state != "active":
        return Outcome(t.pid, action, True, f"signal sent (session was {before.state}: "
                                            "nothing to cancel)", t.fingerprint)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = _still_there(conn, t)
        if now is None or now.state != "active" or now.query_age_s is None or \
                (before.query_age_s is not None and now.query_age_s < before.query_age_s):
            return Outcome(t.pid, action, True, "cancelled", t.fingerprint)
        time.sleep(0.05)
    return Outcome(t.pid, action, False, f"signal sent, query still running after {wait_s:g}s",
                   t.fingerprint)


# ------------------------------------------------------------------------- kill-all
@dataclass
class KillAllPlan:
    database: str
    targets: list[Target]
    spared: list[Spared]


def plan_kill_all(conn: psycopg.Connection, database: str, *, ops_role: str,
                  include_ops: bool = False, own_pids: set[int] = frozenset()) -> KillAllPlan:  # type: ignore[assignment]
    """Who ``kill-all`` would terminate in ``database``, and who it spares and why. An unknown
    database is refused (a typo must not look like "nobody to kill")."""
    require_database(conn, database)
    slot_of = {pid: name for pid, name in conn.execute(load("get_slot_consumers")).fetchall()}
    me = conn.execute(load("get_current_role_is_superuser")).fetchone()[0]
    targets, spared = [], []
    for s in activity.sessions(conn):
        t = Target.of(s)
        replication = s.backend_type == "walsender" or s.pid in slot_of
        if s.database != database and not replication:
            continue
        if s.is_self or s.pid in own_pids:
            spared.append(Spared(t, "this command's own session"))
        elif s.pid in slot_of:
            spared.append(Spared(t, f"consumer of replication slot {slot_of[s.pid]}"))
        elif s.backend_type == "walsender":
            spared.append(Spared(t, "replication (walsender)"))
        elif s.backend_type != "client backend":
            spared.append(Spared(t, f"server process ({s.backend_type})"))
        elif s.role == ops_role and not include_ops:
            spared.append(Spared(t, f"ops role {ops_role} (add --include-ops)"))
        elif s.is_superuser and not me:
            spared.append(Spared(t, "superuser session (pg_signal_backend cannot end it)"))
        else:
            targets.append(t)
    return KillAllPlan(database, targets, spared)


def kill_all(conn: psycopg.Connection, plan: KillAllPlan, *, profile: str,
             wait_s: float = 5.0) -> list[Outcome]:
    with audited("emergency.kill_all", profile, database=plan.database,
                 spared=len(plan.spared)) as line:
        outcomes = signal(conn, plan.targets, "terminate", profile=profile, wait_s=wait_s,
                          audit_action="emergency.kill_all.terminate")
        line.update(terminated=sum(o.ok for o in outcomes),
                    failed=sum(not o.ok for o in outcomes))
    return outcomes


# ------------------------------------------------------------------------- block new
@dataclass
class BlockState:
    profile: str
    database: str
    previous_limit: int
    blocked_at: str
    by_pid: int
    statement: str = ""
    undo: str = ""
    session_pid: int = 0  # the owner session that holds the block (spare it)


def block_state_path(profile: str, database: str) -> Path:
    """One file per (profile, database): a readable part plus a digest of the exact pair, so
    two names that read alike once sanitized ("a/b" and "a_b") never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{profile}-{database}")
    digest = hashlib.sha256(f"{profile}\0{database}".encode()).hexdigest()[:12]
    return studyhub_home() / "emergency" / f"block-{safe}-{digest}.json"


def _legacy_block_state_path(profile: str, database: str) -> Path:
    """Where versions before the digest kept the file (still read, so a block made by one of
    them can be undone)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{profile}-{database}")
    return studyhub_home() / "emergency" / f"block-{safe}.json"


def _block_state_file(profile: str, database: str) -> tuple[Path, BlockState] | None:
    for path in (block_state_path(profile, database),
                 _legacy_block_state_path(profile, database)):
        if path.exists():
            state = BlockState(**json.loads(path.read_text()))
            if (state.profile, state.database) == (profile, database):
                return path, state
    return None


def read_block_state(profile: str, database: str) -> BlockState | None:
    found = _block_state_file(profile, database)
    return found[1] if found else None


def _limit_sql(database: str, limit: int) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
        sql.Identifier(database), sql.Literal(limit))


def block_new_connections(conn: psycopg.Connection, profile: str, database: str) -> BlockState:
    """Record the current limit, then ``CONNECTION LIMIT 0`` (``conn`` = the owner, app role).
    Sessions already connected (ours included) stay; superusers can still connect."""
    row = conn.execute(load("get_database_connection_limit"), {"database": database}).fetchone()
    if row is None:
        raise StudyhubError(f"no database {database}")
    previous, _, owner = row
    existing = read_block_state(profile, database)
    if existing is not None:  # blocked by an earlier run that did not undo: keep its limit
        previous = existing.previous_limit
    stmt = _limit_sql(database, 0).as_string(conn)
    state = BlockState(profile, database, previous,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"), os.getpid(),
                       stmt, _limit_sql(database, previous).as_string(conn),
                       conn.info.backend_pid)
    path = block_state_path(profile, database)
    with audited("emergency.block_new", profile, database=database, previous_limit=previous):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(state), indent=2) + "\n")  # before acting: crash → undo
        try:
            conn.execute(_limit_sql(database, 0))
        except psycopg.errors.InsufficientPrivilege:
            path.unlink(missing_ok=True)
            raise PrivilegeMissing(
                f"role {conn.info.user} may not change database {database} (owner: {owner}); "
                "blocking new connections needs the database owner (nothing was changed)"
            ) from None
        except psycopg.Error:
            path.unlink(missing_ok=True)
            raise
    return state


@dataclass
class UnblockResult:
    database: str
    restored_limit: int
    from_state_file: bool
    via_database: str


MAINTENANCE_DATABASES = ("postgres", "defaultdb", "template1")


def unblock_new_connections(profile: Profile, database: str,
                            conn: psycopg.Connection | None = None) -> UnblockResult:
    """Restore the connection limit recorded when blocking (or -1 when no record exists), over
    ``conn`` when it is still alive, else over a new owner connection to a maintenance database
    (the blocked database itself refuses new non-superuser connections)."""
    state = read_block_state(profile.name, database)
    limit = state.previous_limit if state else -1
    tried: list[str] = []
    candidates: list[tuple[str, psycopg.Connection | None]] = []
    if conn is not None and not conn.closed:
        candidates.append((conn.info.dbname, conn))
    for db in (database, *MAINTENANCE_DATABASES):
        candidates.append((db, None))
    for db, c in candidates:
        own = c is None
        try:
            if own:
                c = connect(profile, "app", database=db, autocommit=True,
                            application_name="studyhub emergency", connect_timeout=5)
            try:
                require_database(c, database)  # an unknown database: one line, no audit
                with audited("emergency.unblock_new", profile.name, database=database,
                             restored_limit=limit, from_state_file=state is not None):
                    try:
                        c.execute(_limit_sql(database, limit))
                    except psycopg.errors.InsufficientPrivilege as exc:
                        raise PrivilegeMissing(f"cannot restore the connection limit of "
                                               f"{database}: {first_line(exc)}") from None
                    while (found := _block_state_file(profile.name, database)) is not None:
                        found[0].unlink()
            finally:
                if own:
                    c.close()
        except (ConnectError, psycopg.OperationalError) as exc:
            tried.append(f"{db}: {first_line(exc)}")
            continue
        return UnblockResult(database, limit, state is not None, db)
    raise StudyhubError(f"could not reach the server to re-allow connections to {database} "
                        f"({'; '.join(tried)}); run `studyhub emergency unblock` again, or as "
                        f"an administrator: {_limit_sql(database, limit).as_string(None)};")


@contextmanager
def new_connections_blocked(profile: Profile, database: str) -> Iterator[BlockState]:
    """Block new connections for the ``with`` body; re-allow them however the body ends."""
    owner_conn = connect(profile, "app", database=database, autocommit=True,
                         application_name="studyhub emergency")
    try:
        state = block_new_connections(owner_conn, profile.name, database)
        try:
            yield state
        finally:
            unblock_new_connections(profile, database, owner_conn)
    finally:
        owner_conn.close()

