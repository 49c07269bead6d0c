"""GET /health: can we write (primary, through the pooler when used) and where reads go."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from studyhub.api.db import Databases
from studyhub.api.deps import databases
from studyhub.api.replica import format_lsn

router = APIRouter(tags=["health"])


class NodeHealth(BaseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class PrimaryHealth(NodeHealth):
    via: str = Field(description="pooler or direct: how the API's writes reach the primary")


class PoolerHealth(BaseModel):
    enabled: bool
    ok: bool | None = None
    error: str | None = None


class ReplicaHealth(BaseModel):
    enabled: bool
    status: str = Field(description="ok, lagging, down, not_standby, starting or disabled")
    serving_reads: bool
    lag_s: float | None = Field(None, description="measured replay lag (upper bound)")
    lag_bytes: int | None = None
    max_lag_s: float | None = None
    replay_paused: bool | None = None
    replay_lsn: str | None = None
    probe_age_s: float | None = None
    error: str | None = None
    reads_on_replica: int = 0
    reads_on_primary: int = 0
    fallbacks: int = Field(0, description="reads that failed on the replica, answered by the primary")
    pinned_reads: int = Field(0, description="reads sent to the primary for read-your-writes")
    pinned_students: int = Field(0, description="students this worker keeps on the primary "
                                                "until the replica replays their last write")
    marks_ignored: int = Field(0, description="read marks not honoured: forged, another "
                                              "student's, or expired")


class Health(BaseModel):
    status: str = Field(description="ok; degraded (replica down or lagging: reads served by the "
                                    "primary); down (writes cannot reach the primary: 503)")
    primary: PrimaryHealth
    pooler: PoolerHealth
    replica: ReplicaHealth


async def health_report(dbs: Databases) -> Health:
    writer = await dbs.check_writer()
    via = dbs.topology.writer
    if via == "pooler":
        direct = await dbs.check_primary_direct() or writer
        primary = PrimaryHealth(via=via, **direct)
        pooler = PoolerHealth(enabled=True, ok=writer["ok"], error=writer["error"])
    else:
        primary = PrimaryHealth(via=via, **writer)
        pooler = PoolerHealth(enabled=False)
    counters = dbs.router.counters
    if dbs.monitor is None:
        replica = ReplicaHealth(enabled=False, status="disabled", serving_reads=False,
                                reads_on_primary=counters.primary)
    else:
        snap = dbs.monitor.snapshot
        replica = ReplicaHealth(
            enabled=True, status=snap.status, serving_reads=dbs.router.choose(None) == "replica",
            lag_s=None if snap.lag_s is None else round(snap.lag_s, 3),
            lag_bytes=snap.lag_bytes, max_lag_s=dbs.monitor.max_lag_s,
            replay_paused=snap.replay_paused, replay_lsn=format_lsn(snap.replay_lsn),
            probe_age_s=round(time.monotonic() - snap.probed_at, 3) if snap.probed_at else None,
            error=snap.error, reads_on_replica=counters.replica, reads_on_primary=counters.primary,
            fallbacks=counters.fallbacks, pinned_reads=counters.pinned,
            pinned_students=dbs.router.pinned_students,
            marks_ignored=counters.marks_ignored,
        )
    if not writer["ok"]:  # writes cannot reach the primary (primary.ok tells whose fault)
        status = "down"
    elif replica.enabled and replica.status != "ok":
        status = "degraded"
    else:
        status = "ok"
    return Health(status=status, primary=primary, pooler=pooler, replica=replica)


@router.get("/health", response_model=Health, responses={503: {
    "model": Health, "description": "Writes cannot reach the primary (status down)."}})
async def health(response: Response, dbs: Databases = Depends(databases)) -> Health:
    """Primary, pooler and replica status with the replica's measured lag. 503 when writes
    cannot reach the primary (the primary or the pooler in front of it is down)."""
    report = await health_report(dbs)
    response.headers["Cache-Control"] = "no-store"
    if report.status == "down":
        response.status_code = 503
    return report
