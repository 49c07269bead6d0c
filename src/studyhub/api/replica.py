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

Several replicas. There is one monitor per read endpoint of the profile; the router picks, per
read, among the replicas that serve (measured lag within the bound, fresh measurement, replayed
what this client must see): preferred region first, then least lag (in probe intervals), then
fewest reads in flight. A replica whose read fails or whose probe errors or times out (a stalled
server) is dropped until its next good probe. A requirement is forgotten only once every serving
replica has replayed it; it then becomes the floor a replica coming back must reach before it
serves anyone, so no replica can ever serve a client a state older than that client's write.

Primary down. When the primary cannot be reached, the monitors keep probing their replicas
(status ``primary_down``). A replica's staleness is then ``now − t`` for the newest primary
sample it has replayed (an upper bound: it grows while the primary stays away). Reads are served
by the least stale replica while that is at most ``max_stale_read_s`` and it has replayed the
client's own writes, with the ``X-StudyHub-Stale-Seconds`` header; writes answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, Sequence

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
        return self.staleness(now, replay_lsn)

    def staleness(self, now: float, replay_lsn: int) -> float | None:
        """Without a new primary sample (the primary cannot be reached): ``now − t`` for the
        newest kept sample the replica has replayed; None when it has replayed none."""
        newest_covered: float | None = None
        for t, lsn in self._samples:
            if lsn <= replay_lsn:
                newest_covered = t
            else:
                break
        return None if newest_covered is None else max(0.0, now - newest_covered)

    @property
    def oldest_age(self) -> float:
        return 0.0 if not self._samples else time.monotonic() - self._samples[0][0]


@dataclass(frozen=True)
class ReplicaSnapshot:
    """What the monitor last measured. ``status``: ok, lagging, down, not_standby, starting,
    disabled, primary_down (the replica answers, the primary does not: ``lag_s`` is then its
    staleness at the probe)."""

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
        name: str = "replica",
        region: str | None = None,
    ) -> None:
        self.name = name
        self.region = region
        self.outstanding = 0  # reads in flight on this replica (this process)
        self.reads = 0  # reads this replica answered (this process)
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

    def fresh(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.snapshot.probed_at <= self.stale_after_s

    def staleness(self, now: float | None = None) -> float | None:
        """Upper bound, now, on how old the replica's state is (see LagTracker.staleness)."""
        if self.snapshot.replay_lsn is None:
            return None
        return self.tracker.staleness(time.monotonic() if now is None else now,
                                      self.snapshot.replay_lsn)

    def on_update(self, listener: Callable[[ReplicaSnapshot], None]) -> None:
        self._listeners.append(listener)

    def _publish(self, snap: ReplicaSnapshot) -> None:
        previous = self.snapshot.status
        self.snapshot = snap
        if snap.status != previous:
            log.warning("replica %s: %s -> %s%s", self.name, previous, snap.status,
                        f" ({snap.error})" if snap.error else "")
        for listener in self._listeners:
            listener(snap)

    async def probe_once(self) -> ReplicaSnapshot:
        now = time.monotonic()
        primary_error: str | None = None
        try:
            primary_text = await asyncio.wait_for(self._primary_wal_lsn(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot measure"
            primary_text = None
            primary_error = f"cannot read the primary's WAL position: {first_line(exc)}"
        primary_lsn = parse_lsn(primary_text)
        try:
            row = await asyncio.wait_for(self._replica_position(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - an error or a stall (timeout): dropped
            snap = ReplicaSnapshot("down", now, primary_lsn=primary_lsn,
                                   error=first_line(exc) or "probe timed out")
            self._publish(snap)
            return snap
        if not row["in_recovery"] or row["replay_lsn"] is None:
            snap = ReplicaSnapshot("not_standby", now, primary_lsn=primary_lsn,
                                   error="the replica is not in recovery (promoted?)")
            self._publish(snap)
            return snap
        replay_lsn = parse_lsn(row["replay_lsn"])
        if primary_error is not None or primary_lsn is None:
            snap = ReplicaSnapshot(
                "primary_down", now, error=primary_error, replay_lsn=replay_lsn,
                lag_s=None if replay_lsn is None else self.tracker.staleness(now, replay_lsn),
                replay_paused=row["replay_paused"])
            self._publish(snap)
            return snap
        assert replay_lsn is not None
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

    def wake(self) -> None:
        """Probe now instead of at the next interval."""
        self._wake.set()

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
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"replica-monitor-{self.name}")

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
    fallbacks: int = 0  # reads that failed on a replica and were answered elsewhere
    pinned: int = 0  # reads sent to the primary for read-your-writes
    marks_ignored: int = 0  # read marks not honoured: forged, another student's, or expired
    stale: int = 0  # reads answered by a replica while the primary was down
    unavailable: int = 0  # reads nobody could answer within the bounds (503)


class ReadRouter:
    """Decides, per read, which replica (or the primary); remembers each writer's commit LSN."""

    def __init__(self, monitors: ReplicaMonitor | Sequence[ReplicaMonitor] | None,
                 fallback_window_s: float = 10.0, *, preferred_region: str | None = None,
                 max_stale_read_s: float = 0.0) -> None:
        if monitors is None:
            self.monitors: tuple[ReplicaMonitor, ...] = ()
        elif isinstance(monitors, ReplicaMonitor):
            self.monitors = (monitors,)
        else:
            self.monitors = tuple(monitors)
        self.fallback_window_s = fallback_window_s
        self.preferred_region = preferred_region
        self.max_stale_read_s = max_stale_read_s
        self.counters = RoutingCounters()
        self._required_lsn: dict[Hashable, int] = {}
        self._pinned_until: dict[Hashable, float] = {}
        self._floor_lsn = 0
        for m in self.monitors:
            m.on_update(self._forget_replayed)

    @property
    def monitor(self) -> ReplicaMonitor | None:
        """The first replica's monitor (what /health's ``replica`` block shows)."""
        return self.monitors[0] if self.monitors else None

    @property
    def enabled(self) -> bool:
        return bool(self.monitors)

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

    def serving(self, now: float | None = None) -> list[ReplicaMonitor]:
        """The replicas that serve reads now: lag in bounds, fresh probe, at or past the floor."""
        now = time.monotonic() if now is None else now
        return [m for m in self.monitors
                if m.snapshot.status == "ok" and m.fresh(now)
                and (m.snapshot.replay_lsn or 0) >= self._floor_lsn]

    def _forget_replayed(self, _snap: ReplicaSnapshot) -> None:
        """Forget requirements every serving replica has replayed; they become the floor."""
        now = time.monotonic()
        if self._pinned_until:
            for k in [k for k, until in self._pinned_until.items() if until <= now]:
                del self._pinned_until[k]
        serving = self.serving(now)
        if not serving or not self._required_lsn:
            return
        replayed = min(m.snapshot.replay_lsn or 0 for m in serving)
        done = [k for k, lsn in self._required_lsn.items() if lsn <= replayed]
        if done:
            self._floor_lsn = max(self._floor_lsn, *(self._required_lsn.pop(k) for k in done))

    def _needs(self, key: Hashable | None, read_after: ReadAfter | None,
               now: float) -> int | None:
        """The LSN a replica must have replayed to serve this read; None: only the primary."""
        need = self._floor_lsn
        if read_after is not None:
            if read_after.lsn == 0:
                return None
            need = max(need, read_after.lsn)
        if key is not None:
            need = max(need, self._required_lsn.get(key, 0))
            until = self._pinned_until.get(key)
            if until is not None and until > now:
                return None
        return need

    def _rank(self, m: ReplicaMonitor) -> tuple[bool, int, int]:
        lag = m.snapshot.lag_s or 0.0
        return (self.preferred_region is not None and m.region != self.preferred_region,
                int(lag / max(m.interval_s, 0.05)), m.outstanding)

    def pick(self, key: Hashable | None,
             read_after: ReadAfter | None = None) -> ReplicaMonitor | None:
        """The replica for the next read by ``key`` (whose client sent the verified read mark
        ``read_after``, if any), or None for the primary."""
        now = time.monotonic()
        serving = self.serving(now)
        if not serving:
            return None
        need = self._needs(key, read_after, now)
        able = [] if need is None else \
            [m for m in serving if (m.snapshot.replay_lsn or 0) >= need]
        if not able:
            self.counters.pinned += 1
            return None
        return min(able, key=self._rank)

    def choose(self, key: Hashable | None, read_after: ReadAfter | None = None) -> str:
        """The name of the replica for the next read by ``key``, or 'primary'."""
        m = self.pick(key, read_after)
        return "primary" if m is None else m.name

    def primary_down(self) -> bool:
        """A fresh probe found the primary unreachable (and its replica answering)."""
        now = time.monotonic()
        return any(m.snapshot.status == "primary_down" and m.fresh(now) for m in self.monitors)

    def pick_stale(self, key: Hashable | None, read_after: ReadAfter | None = None, *,
                   exclude: set[str] | frozenset[str] = frozenset()
                   ) -> tuple[ReplicaMonitor, float] | None:
        """The primary cannot be reached: the least stale replica that answers, is at most
        ``max_stale_read_s`` stale and has replayed what this client must see; with its
        staleness. None: nobody can answer within the bounds."""
        now = time.monotonic()
        need = self._needs(key, read_after, now)
        if need is None:
            return None
        best: tuple[ReplicaMonitor, float] | None = None
        for m in self.monitors:
            snap = m.snapshot
            if m.name in exclude:
                continue
            if snap.status not in ("ok", "lagging", "primary_down") or not m.fresh(now):
                continue
            if (snap.replay_lsn or 0) < need:
                continue
            stale = m.staleness(now)
            if stale is None or stale > self.max_stale_read_s:
                continue
            if best is None or stale < best[1]:
                best = (m, stale)
        return best

    @property
    def pinned_students(self) -> int:
        return len(self._required_lsn) + len(self._pinned_until)
