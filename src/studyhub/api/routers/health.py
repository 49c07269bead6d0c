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
    name: str | None = Field(None, description="the read endpoint's name in the profile")
    region: str | None = None
    status: str = Field(description="ok, lagging, down, not_standby, starting, primary_down "
                                    "(the replica answers, the primary does not) or disabled")
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
    reads: int = Field(0, description="reads this replica answered (this worker)")
    outstanding: int = Field(0, description="reads in flight on this replica (this worker)")
    stale_reads: int = Field(0, description="reads answered by a replica while the primary was "
                                            "down (all replicas, this worker)")
    unavailable_reads: int = Field(0, description="reads no node could answer within the "
                                                  "bounds (503)")


class Health(BaseModel):
    status: str = Field(description="ok; degraded (replica down or lagging: reads served by the "
                                    "primary); down (writes cannot reach the primary: 503)")
    primary: PrimaryHealth
    pooler: PoolerHealth
    replica: ReplicaHealth = Field(description="the first read endpoint, with this worker's "
                                                "routing counters")
    replicas: list[ReplicaHealth] = Field(default_factory=list,
                                          description="every read endpoint, in profile order")
    serving_stale_reads: bool = Field(False, description="the primary is down and a replica "
                                                         "answers reads within max_stale_read_s")


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
    router = dbs.router
    replicas: list[ReplicaHealth] = []
    serving = router.serving()
    for m in router.monitors:
        snap = m.snapshot
        replicas.append(ReplicaHealth(
            enabled=True, name=m.name, region=m.region, status=snap.status,
            serving_reads=any(x is m for x in serving),
            lag_s=None if snap.lag_s is None else round(snap.lag_s, 3),
            lag_bytes=snap.lag_bytes, max_lag_s=m.max_lag_s,
            replay_paused=snap.replay_paused, replay_lsn=format_lsn(snap.replay_lsn),
            probe_age_s=round(time.monotonic() - snap.probed_at, 3) if snap.probed_at else None,
            error=snap.error, reads_on_replica=counters.replica, reads_on_primary=counters.primary,
            fallbacks=counters.fallbacks, pinned_reads=counters.pinned,
            pinned_students=router.pinned_students, marks_ignored=counters.marks_ignored,
            reads=m.reads, outstanding=m.outstanding, stale_reads=counters.stale,
            unavailable_reads=counters.unavailable,
        ))
    if replicas:
        replica = replicas[0]
    else:
        replica = ReplicaHealth(enabled=False, status="disabled", serving_reads=False,
                                reads_on_primary=counters.primary)
    if not writer["ok"]:  # writes cannot reach the primary (primary.ok tells whose fault)
        status = "down"
    elif any(r.status != "ok" for r in replicas):
        status = "degraded"
    else:
        status = "ok"
    stale = not writer["ok"] and router.pick_stale(None) is not None
    return Health(status=status, primary=primary, pooler=pooler, replica=replica,
                  replicas=replicas, serving_stale_reads=stale)


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
