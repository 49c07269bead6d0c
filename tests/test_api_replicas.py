"""Read routing over several replicas: the choice among them (region, lag, reads in flight), a
replica that fails dropped and re-admitted after a good probe, read-your-writes per replica, and
reads from a replica (stale but bounded, said in a header) while the primary is down.

The session cluster has one replica; a second read endpoint is the same server under another
name, or a TCP proxy in front of it that the test closes and reopens (a replica that "dies" and
"recovers" without stopping the shared server). The primary "goes down" the same way: the
profile's primary port is a proxy the test closes."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Iterator

import pytest

from studyhub.api.read_marks import ReadAfter
from studyhub.api.replica import ReadRouter, ReplicaMonitor, ReplicaSnapshot
from studyhub.profile_model import ReadEndpoint
from studyhub.profiles import Profile
from tests.api_helpers import make_subject, register, running_api
from tests.test_api_routing import READ_FROM, replay_paused

STALE = "x-studyhub-stale-seconds"


# ------------------------------------------------------------------------- a TCP proxy
class TcpProxy:
    """127.0.0.1:port → 127.0.0.1:target. ``close()`` refuses new connections and cuts the
    open ones (as a dead server would); ``open()`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxy_factory() -> Iterator:
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        p = TcpProxy(port)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def base_profile(migrated, with_replica) -> Profile:
    return with_replica.profile()


@pytest.fixture(scope="module")
def subject(base_profile) -> str:
    return make_subject(base_profile)


def with_replicas(profile: Profile, *replicas: ReadEndpoint, **changes) -> Profile:
    return dataclasses.replace(profile, replicas=tuple(replicas), replica_host=replicas[0].host,
                               replica_port=replicas[0].port, **changes)


def the_replica(profile: Profile, name: str = "replica", region: str | None = None
                ) -> ReadEndpoint:
    return ReadEndpoint(name, profile.replica_host or "127.0.0.1", profile.replica_port or 0,
                        region)


def by_name(h: dict) -> dict[str, dict]:
    return {r["name"]: r for r in h["replicas"]}


# ------------------------------------------------------------------------- pure logic
def _monitor(name: str, region: str | None = None) -> ReplicaMonitor:
    async def never() -> None:  # fed by hand
        raise AssertionError

    return ReplicaMonitor(never, never, max_lag_s=1, interval_s=0.2, timeout_s=1, name=name,
                          region=region)


def _ok(m: ReplicaMonitor, replay: int, lag: float = 0.0, status: str = "ok") -> None:
    m._publish(ReplicaSnapshot(status, time.monotonic(), lag_s=lag, replay_lsn=replay))


def test_router_picks_region_then_least_lag_then_fewest_reads_in_flight():
    a, b, c = _monitor("a"), _monitor("b", region="fra1"), _monitor("c")
    router = ReadRouter([a, b, c])
    _ok(a, 100, lag=0.5)
    _ok(b, 100, lag=0.5)
    _ok(c, 100, lag=0.0)
    assert router.choose(None) == "c"  # least lag
    _ok(c, 100, lag=0.5)
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert router.choose(None) == "b"  # equal lag: fewest in flight
    b.outstanding = 5
    assert router.choose(None) == "c"
    router.preferred_region = "fra1"
    assert router.choose(None) == "b"  # the region first, however busy
    _ok(b, 100, lag=3.0, status="lagging")
    assert router.choose(None) == "c"  # out of bounds: the others, outside the region
    for m in (a, c):
        _ok(m, 100, status="lagging", lag=3.0)
    assert router.choose(None) == "primary"


def test_a_writer_is_served_only_by_a_replica_that_replayed_its_write():
    a, b = _monitor("a"), _monitor("b")
    router = ReadRouter([a, b])
    _ok(a, 1000)
    _ok(b, 1000)
    router.note_write("alice", 1500)
    _ok(a, 1500)  # a has replayed alice's commit, b has not
    a.outstanding = 10  # busier, but the only one that may serve alice
    assert router.choose("alice") == "a" and router.choose("bob") == "b"
    # A client's read mark counts the same way (another worker took the write).
    assert router.choose("carol", ReadAfter(1400, time.time() + 60)) == "a"
    assert router.choose("carol", ReadAfter(0, time.time() + 60)) == "primary"  # LSN unknown
    assert router.pinned_students == 1  # not forgotten while a serving replica lacks it
    _ok(b, 1600)
    assert router.pinned_students == 0
    # b drops out and comes back behind what was forgotten: it serves nobody until it
    # reaches the floor.
    b.report_failure(OSError("connection refused"))
    assert router.choose("bob") == "a"
    _ok(b, 1200)
    assert [m.name for m in router.serving()] == ["a"]
    assert router.choose("alice") == "a" and router.choose("bob") == "a"


def test_stale_reads_are_bounded_and_keep_read_your_writes():
    a, b = _monitor("a"), _monitor("b")
    router = ReadRouter([a, b], max_stale_read_s=5.0)
    now = time.monotonic()
    for m, replay in ((a, 300), (b, 200)):
        m.tracker.observe(now - 4.0, 200, 200)  # both had replayed 200 four seconds ago,
    a.tracker.observe(now - 1.0, 300, 300)  # a had replayed 300 one second ago
    for m, replay in ((a, 300), (b, 200)):
        m._publish(ReplicaSnapshot("primary_down", now, replay_lsn=replay))
    assert router.primary_down() and router.choose(None) == "primary"  # no "ok" replica
    m, stale = router.pick_stale(None)
    assert m is a and 1.0 <= stale < 2.0  # the least stale
    assert router.pick_stale(None, exclude={"a"})[0] is b
    router.note_write("dave", 350)  # a write neither replica has
    assert router.pick_stale("dave") is None
    assert router.pick_stale("erin", ReadAfter(250, time.time() + 60))[0] is a
    router.max_stale_read_s = 0.5
    assert router.pick_stale(None) is None  # older than the bound: nobody answers


# ------------------------------------------------------------- real replicas, real API
def test_two_endpoints_a_dead_one_and_region_preference(base_profile, subject):
    profile = with_replicas(base_profile, the_replica(base_profile),
                            the_replica(base_profile, "replica-fra", region="fra1"),
                            ReadEndpoint("dead", "127.0.0.1", closed_port(), "fra1"))
    with running_api(profile, use_pooler=False, preferred_region="fra1") as api:
        h = api.wait_for(lambda h: by_name(h)["replica-fra"]["status"] == "ok"
                         and by_name(h)["dead"]["status"] == "down", "the probes")
        assert [r["name"] for r in h["replicas"]] == ["replica", "replica-fra", "dead"]
        assert by_name(h)["dead"]["serving_reads"] is False and h["status"] == "degraded"
        s = register(api)
        s.post("/notes", json={"subject_id": subject, "title": "t"})
        api.wait_for(lambda h: h["replica"]["pinned_students"] == 0, "replay of the write")
        # The dead endpoint is in the preferred region too, but never chosen.
        got = [s.get("/notes").headers[READ_FROM] for _ in range(10)]
        assert got == ["replica-fra"] * 10
        assert by_name(api.health())["replica-fra"]["reads"] >= 10


def test_a_failing_replica_is_dropped_and_readmitted(base_profile, subject, proxy_factory):
    proxy = proxy_factory(base_profile.replica_port)
    profile = with_replicas(base_profile,
                            ReadEndpoint("flaky", "127.0.0.1", proxy.port, "fra1"),
                            the_replica(base_profile))
    with running_api(profile, use_pooler=False, preferred_region="fra1") as api:
        s = register(api)
        api.wait_for(lambda h: by_name(h)["flaky"]["status"] == "ok"
                     and h["replica"]["pinned_students"] == 0, "the probes")
        assert s.get("/notes").headers[READ_FROM] == "flaky"
        proxy.close()  # the replica behind "flaky" is gone; its pooled connections cut
        r = s.get("/notes")
        assert r.status_code == 200 and r.headers[READ_FROM] in ("primary", "replica")
        h = api.wait_for(lambda h: by_name(h)["flaky"]["status"] == "down", "flaky dropped")
        assert by_name(h)["flaky"]["error"]
        assert [s.get("/notes").headers[READ_FROM] for _ in range(5)] == ["replica"] * 5
        proxy.open()
        api.wait_for(lambda h: by_name(h)["flaky"]["status"] == "ok", "flaky re-admitted")
        assert s.get("/notes").headers[READ_FROM] == "flaky"


def test_primary_down_reads_stale_but_bounded_writes_503(base_profile, cluster, subject,
                                                         proxy_factory):
    primary = proxy_factory(base_profile.port)
    profile = with_replicas(base_profile, the_replica(base_profile), port=primary.port)
    with running_api(profile, use_pooler=False, max_replica_lag_s=120,
                     max_stale_read_s=5.0) as api:
        reader, writer = register(api), register(api)
        note = reader.post("/notes", json={"subject_id": subject, "title": "seen"}).json()
        api.wait_for(lambda h: h["replica"]["status"] == "ok"
                     and h["replica"]["pinned_students"] == 0, "the replica to replay")
        with replay_paused(cluster):
            mine = writer.post("/notes", json={"subject_id": subject, "title": "unreplayed"})
            assert mine.status_code == 201
            primary.close()
            h = api.wait_for(lambda h: h["replica"]["status"] == "primary_down", "the probe")
            assert h["status"] == "down" and h["serving_stale_reads"] is True
            r = reader.get(f"/notes/{note['id']}")
            assert r.status_code == 200 and r.json()["title"] == "seen"
            assert r.headers[READ_FROM] == "replica"
            assert 0 <= float(r.headers[STALE]) <= 5.0
            # The writer's note is not on the replica: no stale answer without it (503), never
            # a read that misses the writer's own write.
            r = writer.get(f"/notes/{mine.json()['id']}")
            assert r.status_code == 503 and r.headers["retry-after"]
            w = reader.post("/notes", json={"subject_id": subject, "title": "x"})
            assert w.status_code == 503 and w.headers["retry-after"]
            # Past the bound, reads stop too.
            api.wait_for(lambda h: h["serving_stale_reads"] is False, "the bound to pass", 15)
            r = reader.get(f"/notes/{note['id']}")
            assert r.status_code == 503 and STALE not in r.headers
        primary.open()
        api.wait_for(lambda h: h["status"] == "ok", "the primary to return")
        assert reader.post("/notes", json={"subject_id": subject, "title": "y"}).status_code \
            == 201
        assert writer.get(f"/notes/{mine.json()['id']}").status_code == 200
