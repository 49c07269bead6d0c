"""What ``studyhub cluster`` works with, on either provider: the result dataclasses, the plan of
a change, ``ClusterOpError``, the naming rules (DigitalOcean's, followed locally too), times, and
the ``ClusterBackend`` protocol both backends implement (``local``, ``digitalocean``).

Nothing here talks to a server: the backends import this module, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from studyhub.errors import StudyhubError
from studyhub.profiles import Profile

Progress = Callable[[str], None]

# DigitalOcean's rule for cluster (and so fork and replica) names; local forks follow it too so a
# rehearsal uses names that will work on the managed service.
# Whole names, matched with fullmatch: a "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")
POOL_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{2,59}")
POOL_MODES = ("transaction", "session", "statement")


def _noop(_: str) -> None:
    pass


class ClusterOpError(StudyhubError):
    """A cluster operation was refused or failed; nothing (more) was changed."""


# ----------------------------------------------------------------------------- results
@dataclass
class ApiRequest:
    """One HTTP request a DigitalOcean operation sends (shown by --dry-run; never a secret)."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class Node:
    role: str  # primary, standby, replica, pooler
    name: str
    host: str | None
    port: int | None
    status: str
    detail: str | None = None


@dataclass
class Replica:
    name: str
    status: str
    host: str | None = None
    port: int | None = None
    size: str | None = None
    region: str | None = None
    created_at: datetime | None = None
    lag_bytes: int | None = None
    replay_lag_s: float | None = None


@dataclass
class StreamingClient:
    """A row of pg_stat_replication on the primary (how far each standby is behind)."""

    application_name: str
    client_addr: str | None
    state: str
    lag_bytes: int | None
    replay_lag_s: float | None


@dataclass
class Pool:
    name: str
    database: str
    user: str | None  # None: clients connect as themselves
    mode: str
    size: int
    host: str | None = None
    port: int | None = None


@dataclass
class Backup:
    created_at: datetime  # DigitalOcean: when taken; local: when the base backup started
    kind: str  # "daily" (DigitalOcean) or "base" (local pg_basebackup)
    size_bytes: int | None = None
    label: str | None = None
    finished_at: datetime | None = None
    path: str | None = None


@dataclass
class RecoveryWindow:
    """Times a fork can be made at: [earliest, latest]; None when there is none."""

    earliest: datetime | None
    latest: datetime | None
    basis: str  # how the bounds were found, in words

    def contains(self, at: datetime) -> bool:
        return (self.earliest is not None and self.latest is not None
                and self.earliest <= at <= self.latest)

    def describe(self) -> str:
        if self.earliest is None or self.latest is None:
            return f"no recoverable window ({self.basis})"
        return f"{iso(self.earliest)} … {iso(self.latest)}"


@dataclass
class WalArchive:
    directory: str
    segments: int
    total_bytes: int
    first_segment: str | None
    last_segment: str | None
    last_archived_at: datetime | None
    last_commit_at: datetime | None  # newest commit record in the archive (pg_waldump)
    archiver_failed_count: int | None = None
    last_failed_wal: str | None = None
    last_failed_at: datetime | None = None
    gaps: list[str] = field(default_factory=list)  # missing segments between first and last


@dataclass
class Backups:
    provider: str
    cluster: str
    backups: list[Backup]
    window: RecoveryWindow
    wal_archive: WalArchive | None = None
    schedule: str | None = None
    in_progress: str | None = None


@dataclass
class TableCheck:
    table: str
    rows: int
    latest_column: str
    latest_at: datetime | None


@dataclass
class Verification:
    database: str
    tables: list[TableCheck]
    missing_tables: list[str]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Fork:
    name: str
    provider: str
    status: str
    target_time: datetime | None = None
    source: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    url: str | None = None  # how to connect; never a password
    created_at: datetime | None = None
    base_backup: str | None = None
    id: str | None = None
    size: str | None = None
    region: str | None = None


@dataclass
class Plan:
    """What a changing operation will do. ``summary`` is for people, ``params`` for the code
    that executes it, ``requests`` the DigitalOcean API calls it sends (in order)."""

    provider: str
    action: str  # e.g. "fork", "replica add", "resize"
    cluster: str
    summary: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    requests: list[ApiRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    offline: bool = False  # built without asking the provider anything (--dry-run)


@dataclass
class ForkErasures:
    """The privacy erasure ledger re-applied to a fork: a fork is the database as it was at its
    point in time, so everyone erased since is back in it until this has run."""

    status: str  # reapplied | no-ledger | skipped (--no-reapply-erasures)
    ledger_entries: int = 0  # people in the merged ledger (source database, file, fork's own)
    reapplied: int = 0  # of them, present in the fork: erased again
    already_absent: int = 0  # not in the fork (erased before its point in time, or never there)
    rows_deleted: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # where the entries came from
    duration_s: float = 0.0


@dataclass
class ForkResult:
    fork: Fork
    recovered_to: datetime | None  # last transaction the fork contains (local: from the log)
    first_excluded_at: datetime | None  # first commit it does not contain (local)
    duration_s: float
    verification: Verification | None
    erasures: ForkErasures | None = None


@dataclass
class ChangeResult:
    provider: str
    action: str
    cluster: str
    target: str
    status: str
    duration_s: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterInfo:
    provider: str
    name: str
    id: str | None
    status: str
    version: str | None
    size: str | None
    num_nodes: int | None
    region: str | None
    nodes: list[Node]
    replicas: list[Replica]
    pools: list[Pool]
    streaming: list[StreamingClient]
    maintenance_window: str | None
    maintenance_pending: bool | None
    latest_backup_at: datetime | None
    backups_count: int
    window: RecoveryWindow | None
    forks: list[Fork]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- backends
class ClusterBackend(Protocol):
    provider: str
    profile: Profile

    def info(self) -> ClusterInfo: ...
    def backups(self) -> Backups: ...
    def basebackup_plan(self, keep: int | None = None, *, offline: bool = False) -> Plan: ...
    def fork_plan(self, at: datetime, name: str, *, offline: bool = False,
                  reapply_erasures: bool = True) -> Plan: ...
    def fork(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
             poll_interval_s: float = 10) -> ForkResult: ...
    def forks(self) -> list[Fork]: ...
    def fork_stop(self, name: str) -> Fork: ...
    def fork_start(self, name: str) -> Fork: ...
    def fork_remove_plan(self, name: str, *, offline: bool = False) -> Plan: ...
    def fork_remove(self, plan: Plan) -> ChangeResult: ...
    def fork_promote_plan(self, name: str, *, offline: bool = False) -> Plan: ...
    def fork_promote(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
                     poll_interval_s: float = 10) -> ChangeResult: ...
    def replicas(self) -> list[Replica]: ...
    def replica_add_plan(self, name: str | None, size: str | None, region: str | None, *,
                         offline: bool = False) -> Plan: ...
    def replica_add(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
                    poll_interval_s: float = 10) -> Replica: ...
    def replica_remove_plan(self, name: str, *, offline: bool = False) -> Plan: ...
    def replica_remove(self, plan: Plan) -> ChangeResult: ...
    def resize_plan(self, size: str, num_nodes: int | None, *, offline: bool = False) -> Plan: ...
    def resize(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
               poll_interval_s: float = 10) -> ChangeResult: ...
    def pools(self) -> list[Pool]: ...
    def pool_add_plan(self, name: str, database: str | None, user: str | None, mode: str,
                      size: int, *, offline: bool = False) -> Plan: ...
    def pool_add(self, plan: Plan) -> Pool: ...
    def pool_remove_plan(self, name: str, *, offline: bool = False) -> Plan: ...
    def pool_remove(self, plan: Plan) -> ChangeResult: ...


# ----------------------------------------------------------------------------- helpers
def iso(ts: datetime | None, timespec: str = "seconds") -> str:
    if ts is None:
        return "-"
    return ts.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_timestamp(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time with an explicit zone (``2026-05-01T14:03:00Z``, ``…+02:00``) or
    ``now``. A time without a zone is refused: at 3 a.m. nobody should guess which zone."""
    raw = text.strip()
    if raw.lower() == "now":
        return now or datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" UTC", "+00:00"))
    except ValueError:
        raise ClusterOpError(
            f"cannot read the time {raw!r}; use ISO 8601 with a zone, e.g. 2026-05-01T14:03:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise ClusterOpError(
            f"the time {raw!r} has no time zone; add one, e.g. {raw}Z (UTC) or {raw}+02:00"
        )
    return parsed.astimezone(timezone.utc)


def check_name(name: str, what: str = "cluster") -> str:
    if not NAME_RE.fullmatch(name):
        raise ClusterOpError(
            f"invalid {what} name {name!r}: 3-63 characters, lowercase letters, digits and "
            f"hyphens, starting with a letter (DigitalOcean's rule)"
        )
    return name


def check_pool(name: str, mode: str, size: int) -> None:
    if not POOL_NAME_RE.fullmatch(name):
        raise ClusterOpError(
            f"invalid pool name {name!r}: 3-60 characters, lowercase letters, digits, '_' and "
            f"'-', starting with a letter"
        )
    if name == "pgbouncer":
        raise ClusterOpError("the pool name 'pgbouncer' is PgBouncer's admin console")
    if mode not in POOL_MODES:
        raise ClusterOpError(f"unknown pool mode {mode!r}; choose one of {', '.join(POOL_MODES)}")
    if size < 1:
        raise ClusterOpError(f"pool size must be at least 1 (got {size})")


def refuse_outside(window: RecoveryWindow, at: datetime) -> None:
    if not window.contains(at):
        raise ClusterOpError(
            f"{iso(at)} is outside the recoverable window: {window.describe()}"
        )
