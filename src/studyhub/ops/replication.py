"""Replication as seen from the primary (every standby's lag, the slots) and, when reachable,
from the replica itself. Read-only; works as the ops role (pg_monitor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from studyhub.connect import ConnectError, first_line
from studyhub.ops.queries import load
from studyhub.profiles import Profile


@dataclass
class ReplicaLag:
    pid: int
    name: str
    client_addr: str | None
    state: str
    sync_state: str
    send_lag_bytes: int | None
    flush_lag_bytes: int | None
    replay_lag_bytes: int | None
    write_lag_s: float | None
    flush_lag_s: float | None
    replay_lag_s: float | None
    last_reply_age_s: float | None


@dataclass
class ReplicationSlot:
    slot_name: str
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    retained_bytes: int | None


@dataclass
class ReplicaSelfStatus:
    """As the replica itself sees it."""

    endpoint: str
    in_recovery: bool
    replay_pause_state: str | None
    receive_replay_gap_bytes: int | None
    last_replay_age_s: float | None
    receiver_status: str | None


@dataclass
class ReplicationReport:
    is_replica: bool
    replicas: list[ReplicaLag]
    slots: list[ReplicationSlot]
    replica_self: ReplicaSelfStatus | None = None
    replica_note: str | None = None


def replication_from_primary(conn: psycopg.Connection) -> tuple[list[ReplicaLag], list[ReplicationSlot]]:
    with conn.cursor(row_factory=dict_row) as cur:
        replicas = [ReplicaLag(**r) for r in cur.execute(load("get_replication_status")).fetchall()]
        slots = [ReplicationSlot(**r) for r in cur.execute(load("get_replication_slots")).fetchall()]
    return replicas, slots


def replica_self_status(conn: psycopg.Connection, endpoint: str) -> ReplicaSelfStatus:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(load("get_replica_self_status")).fetchone()
    return ReplicaSelfStatus(endpoint=endpoint, **row)


def replication_report(profile: Profile, conn: psycopg.Connection) -> ReplicationReport:
    """Lag of every replica and slot from the primary (``conn``, the ops role) and, when the
    profile names a replica, the replica's own view; an unreachable replica is a note."""
    in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    replicas, slots = replication_from_primary(conn) if not in_recovery else ([], [])
    report = ReplicationReport(in_recovery, replicas, slots)
    if profile.replica_port:
        ep = f"{profile.replica_host}:{profile.replica_port}"
        try:
            with _replica_connect(profile) as rconn:
                report.replica_self = replica_self_status(rconn, ep)
        except (ConnectError, psycopg.Error) as exc:
            report.replica_note = f"replica {ep} unreachable: {first_line(exc)}"
    return report


def _replica_connect(profile: Profile) -> psycopg.Connection:
    """The replica as the ops role (the replica endpoint carries the app user by default)."""
    ep = profile.endpoint("replica")
    kwargs: dict[str, Any] = {**ep.conninfo(), "user": profile.users["ops"]}
    pw = profile.password_for(profile.users["ops"])
    if pw is not None:
        kwargs["password"] = pw.get_secret_value()
    try:
        return psycopg.connect(**kwargs, autocommit=True, connect_timeout=5,
                               application_name="studyhub diag")
    except psycopg.OperationalError as exc:
        raise ConnectError(first_line(exc)) from None
