"""Lag-aware read routing: measure the replica's replay lag, decide per request where reads go.

How the lag is measured. Every ``probe_interval_s`` the monitor reads the primary's WAL position
(``pg_current_wal_lsn()``) and then the replica's replay position (``pg_last_wal_replay_lsn()``),
and keeps the recent (time, primary LSN) samples. The replica contains everything the primary had
at time *t* when that sample's LSN is at or below its replay LSN, so its staleness is at most
``now − t`` for the newest such sample (zero when it has replayed the primary's current
position). This works whether the primary is busy or idle, while replay is paused, and when the
replica has lost its connection to the primary (its own ``pg_last_xact_replay_timestamp()``
alone misreads all three). A replica that is not in recovery (promoted) is never read from.

Read-your-writes. After each write the API reads the primary's WAL position once more (after
COMMIT, so the commit record is at or below it). That student's reads go to the replica only
once the monitor has seen the replica replay past that LSN; until then they go to the primary.
Everyone else keeps reading from the replica. This is exact (no guessed window), costs one extra
short query per write, and holds however long replay is paused. The position travels two ways:
in this process's map (student → LSN), and with the client, as a signed read mark it echoes
(:mod:`studyhub.api.read_marks`), so a read served by any other worker or machine honours it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable

from studyhub.api.read_marks import ReadAfter

log = logging.getLogger("studyhub.api.replica")

MAX_PINNED = 100_000  # students pinned to the primary before the map collapses to a floor


def parse_lsn(text: str | None) -> int | None:
    """'16/B374D848' → integer position; None stays None."""
    if text is None:
        return None
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def format_lsn(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class LagTracker:
    """Staleness of the replica from (time, primary LSN) samples and its replay LSN."""

    def __init__(self, horizon_s: float = 120.0) -> None:
        self.horizon_s = horizon_s
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, primary_lsn: int, replay_lsn: int) -> float | None:
        """Record the primary's position sampled at ``now`` (before the replica's), and return
        the replica's staleness in seconds: 0 when caught up, an upper bound otherwise, None
        when no kept sample is old enough to bound it (it is behind by more than we know)."""
        self._samples.append((now, primary_lsn))
        while self._samples and now - self._samples[0][0] > self.horizon_s:
            self._samples.popleft()
        if replay_lsn >= primary_lsn:
            # Caught up with the newest sample: older samples are no longer needed.
            self._samples = deque([self._samples[-1]])
            return 0.0
        newest_covered: float | None = None
        for t, lsn in self._samples:
            if lsn <= replay_lsn:
                newest_covered = t
            else:
                break
        if newest_covered is None:
            return None
        return max(0.0, now - newest_covered)

    @property
    def oldest_age(self) -> float:
        return 0.0 if not self._samples else time.monotonic() - self._samples[0][0]


@dataclass(frozen=True)
class ReplicaSnapshot:
    """What the monitor last measured. ``status``: ok, lagging, down, not_standby, starting,
    disabled."""

    status: str
    probed_at: float = 0.0  # time.monotonic() of the probe
    lag_s: float | None = None
    lag_bytes: int | None = None
    replay_lsn: int | None = None
    primary_lsn: int | None = None
    replay_paused: bool | None = None
    error: str | None = None


def first_line(exc: BaseException) -> str:
    """An exception's first line, without SQLAlchemy's '[SQL: ...]' tail (no query text)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split("[SQL:")[0].strip() or type(exc).__name__


Probe = Callable[[], Awaitable[Any]]


class ReplicaMonitor:
    """Samples the primary's and the replica's WAL positions in the background."""

    def __init__(
        self,
        primary_wal_lsn: Probe,
        replica_position: Probe,
        *,
        max_lag_s: float,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._primary_wal_lsn = primary_wal_lsn
        self._replica_position = replica_position
        self.max_lag_s = max_lag_s
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.tracker = LagTracker(horizon_s=max(120.0, 20 * max_lag_s))
        self.snapshot = ReplicaSnapshot("starting")
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[ReplicaSnapshot], None]] = []
        self._wake = asyncio.Event()

    @property
    def stale_after_s(self) -> float:
        """A snapshot older than this is not trusted for routing."""
        return max(3 * self.interval_s, 1.0) + self.timeout_s

    def on_update(self, listener: Callable[[ReplicaSnapshot], None]) -> None:
        self._listeners.append(listener)

    def _publish(self, snap: ReplicaSnapshot) -> None:
        previous = self.snapshot.status
        self.snapshot = snap
        if snap.status != previous:
            log.warning("replica %s -> %s%s", previous, snap.status,
                        f" ({snap.error})" if snap.error else "")
        for listener in self._listeners:
            listener(snap)

    async def probe_once(self) -> ReplicaSnapshot:
        now = time.monotonic()
        try:
            primary_text = await asyncio.wait_for(self._primary_wal_lsn(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot measure"
            snap = ReplicaSnapshot("down", now, error=f"cannot read the primary's WAL position: "
                                                      f"{first_line(exc)}")
            self._publish(snap)
            return snap
        primary_lsn = parse_lsn(primary_text)
        try:
            row = await asyncio.wait_for(self._replica_position(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            snap = ReplicaSnapshot("down", now, primary_lsn=primary_lsn, error=first_line(exc))
            self._publish(snap)
            return snap
        if not row["in_recovery"] or row["replay_lsn"] is None:
            snap = ReplicaSnapshot("not_standby", now, primary_lsn=primary_lsn,
                                   error="the replica is not in recovery (promoted?)")
            self._publish(snap)
            return snap
        replay_lsn = parse_lsn(row["replay_lsn"])
        assert primary_lsn is not None and replay_lsn is not None
        lag_s = self.tracker.observe(now, primary_lsn, replay_lsn)
        lag_bytes = max(0, primary_lsn - replay_lsn)
        if lag_s is None:  # behind by more than the samples we keep
            status, lag_s = "lagging", self.tracker.oldest_age
        else:
            status = "ok" if lag_s <= self.max_lag_s else "lagging"
        snap = ReplicaSnapshot(status, now, lag_s=lag_s, lag_bytes=lag_bytes,
                               replay_lsn=replay_lsn, primary_lsn=primary_lsn,
                               replay_paused=row["replay_paused"])
        self._publish(snap)
        return snap

    def report_failure(self, exc: BaseException) -> None:
        """A read on the replica failed: stop routing there until the next good probe."""
        self._publish(ReplicaSnapshot("down", time.monotonic(), error=first_line(exc)))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as exc:  # noqa: BLE001 - keep probing; a stale snapshot routes
                log.exception("replica probe failed unexpectedly: %s", first_line(exc))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="replica-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


@dataclass
class RoutingCounters:
    replica: int = 0
    primary: int = 0
    fallbacks: int = 0  # reads that failed on the replica and were answered by the primary
    pinned: int = 0  # reads sent to the primary for read-your-writes
    marks_ignored: int = 0  # read marks not honoured: forged, another student's, or expired


@dataclass
class ReadRouter:
    """Decides, per read, replica or primary; remembers each writer's commit LSN."""

    monitor: ReplicaMonitor | None
    fallback_window_s: float = 10.0
    counters: RoutingCounters = field(default_factory=RoutingCounters)
    _required_lsn: dict[Hashable, int] = field(default_factory=dict)
    _pinned_until: dict[Hashable, float] = field(default_factory=dict)
    _floor_lsn: int = 0

    def __post_init__(self) -> None:
        if self.monitor is not None:
            self.monitor.on_update(self._forget_replayed)

    @property
    def enabled(self) -> bool:
        return self.monitor is not None

    def note_write(self, key: Hashable, commit_lsn: int | None) -> None:
        """``key`` just committed; its reads must see ``commit_lsn`` (None: LSN unknown)."""
        if commit_lsn is None:
            self._pinned_until[key] = time.monotonic() + self.fallback_window_s
            return
        if commit_lsn > self._required_lsn.get(key, 0):
            self._required_lsn[key] = commit_lsn
        if len(self._required_lsn) > MAX_PINNED:
            # Bounded memory: one floor for everybody instead of one LSN per student.
            self._floor_lsn = max(self._floor_lsn, *self._required_lsn.values())
            self._required_lsn.clear()

    def _forget_replayed(self, snap: ReplicaSnapshot) -> None:
        if snap.replay_lsn is None:
            return
        replayed = snap.replay_lsn
        if self._required_lsn:
            done = [k for k, lsn in self._required_lsn.items() if lsn <= replayed]
            for k in done:
                del self._required_lsn[k]
        if self._pinned_until:
            now = time.monotonic()
            for k in [k for k, until in self._pinned_until.items() if until <= now]:
                del self._pinned_until[k]

    def choose(self, key: Hashable | None, read_after: ReadAfter | None = None) -> str:
        """'replica' or 'primary' for the next read by ``key``, whose client sent the (verified)
        read mark ``read_after``, if any."""
        if self.monitor is None:
            return "primary"
        snap = self.monitor.snapshot
        if snap.status != "ok" or time.monotonic() - snap.probed_at > self.monitor.stale_after_s:
            return "primary"
        replayed = snap.replay_lsn or 0
        if replayed < self._floor_lsn:
            return "primary"
        if read_after is not None and (read_after.lsn == 0 or read_after.lsn > replayed):
            self.counters.pinned += 1
            return "primary"
        if key is not None:
            need = self._required_lsn.get(key)
            if need is not None and need > replayed:
                self.counters.pinned += 1
                return "primary"
            until = self._pinned_until.get(key)
            if until is not None and until > time.monotonic():
                self.counters.pinned += 1
                return "primary"
        return "replica"

    @property
    def pinned_students(self) -> int:
        return len(self._required_lsn) + len(self._pinned_until)
