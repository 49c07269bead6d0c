"""What ``studyhub agent`` records in the database it watches: its heartbeat per profile
(``ops.agent_heartbeats``, upserted) and one row per finished job run (``ops.agent_runs``). As
the ops role; ``agent status`` and the doctor read them back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from studyhub.ops.queries import load


@dataclass
class AgentRunRecord:
    agent: str
    profile: str
    job: str
    started_at: datetime
    finished_at: datetime
    duration_s: float
    outcome: str  # ok | failed | timeout | cancelled | missed
    detail: str | None = None
    not_ok_last_day: int | None = None  # read back only


@dataclass
class HeartbeatRecord:
    agent: str
    profile: str
    host: str
    pid: int
    started_at: datetime
    beat_at: datetime
    age_s: float


def record_heartbeat(conn: psycopg.Connection, *, agent: str, profile: str, host: str, pid: int,
                     started_at: datetime) -> datetime:
    """Upsert this agent's heartbeat for ``profile``; returns the server's time of the beat."""
    with conn.transaction():
        row = conn.execute(load("do_upsert_agent_heartbeat"), {
            "agent": agent, "profile": profile, "host": host, "pid": pid,
            "started_at": started_at}).fetchone()
    assert row is not None
    return row[0]


def record_run(conn: psycopg.Connection, run: AgentRunRecord) -> None:
    with conn.transaction():
        conn.execute(load("insert_agent_run"), {
            "agent": run.agent, "profile": run.profile, "job": run.job,
            "started_at": run.started_at, "finished_at": run.finished_at,
            "duration_s": run.duration_s, "outcome": run.outcome, "detail": run.detail})


def last_runs(conn: psycopg.Connection, profile: str) -> list[AgentRunRecord]:
    """The newest run of each (agent, job) recorded for ``profile``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("get_agent_last_runs"), {"profile": profile}).fetchall()
    return [AgentRunRecord(**r) for r in rows]


def heartbeats(conn: psycopg.Connection, profile: str) -> list[HeartbeatRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("get_agent_heartbeats"), {"profile": profile}).fetchall()
    return [HeartbeatRecord(**r) for r in rows]
