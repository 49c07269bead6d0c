"""Where the API's reads and writes go: the replica while its lag is in bounds, the primary
after a student's own write (read-your-writes) and whenever the replica lags or is down;
PgBouncer's transaction pooling with the statement caches off."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from studyhub.api.replica import LagTracker, ReadRouter, ReplicaMonitor, ReplicaSnapshot
from studyhub.local import LocalCluster
from studyhub.ops import migrate
from studyhub.profiles import Profile
from tests.api_helpers import RunningApi, make_subject, register, running_api
from tests.conftest import connect_as, make_home

READ_FROM = "x-studyhub-read-from"


@pytest.fixture(scope="module")
def full_profile(migrated, with_replica, with_pooler) -> Profile:
    return with_pooler.profile()


@pytest.fixture(scope="module")
def subject(full_profile) -> str:
    return make_subject(full_profile)


@contextmanager
def replay_paused(cluster: LocalCluster) -> Iterator[None]:
    """Pause WAL replay on the (shared) replica; always resumed, so other tests are unaffected."""
    port = cluster.load_state().replica_port
    with cluster.admin_connect(port=port) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
            assert time.monotonic() < deadline, "replay did not pause"
            time.sleep(0.01)
    try:
        yield
    finally:
        with cluster.admin_connect(port=port) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")


def set_title_on_primary(profile: Profile, note_id: str, title: str) -> None:
    """A change made behind the API's back: only the primary has it until the replica replays."""
    with connect_as(profile) as conn:
        conn.execute("UPDATE notes SET title = %s WHERE id = %s", (title, note_id))


def caught_up(h: dict) -> bool:
    return h["replica"]["status"] == "ok" and h["replica"]["pinned_students"] == 0


# --------------------------------------------------------------------------------- routing
def test_read_your_writes_while_replay_is_paused(full_profile, cluster, subject):
    # A lag bound far above the test's duration: without read-your-writes the writer's reads
    # would go to the (paused, still "in bounds") replica and miss its own note.
    with running_api(full_profile, max_replica_lag_s=120) as api:
        writer, other = register(api), register(api)
        other_note = other.post("/notes", json={"subject_id": subject, "title": "before"}).json()
        api.wait_for(caught_up, "the replica to replay every write")
        with replay_paused(cluster):
            set_title_on_primary(full_profile, other_note["id"], "after")
            note = writer.post("/notes", json={"subject_id": subject, "title": "mine",
                                               "body": "just written"})
            assert note.status_code == 201
            got = writer.get(f"/notes/{note.json()['id']}")
            assert got.status_code == 200 and got.json()["body"] == "just written"
            assert got.headers[READ_FROM] == "primary"
            listed = writer.get("/notes")
            assert [n["id"] for n in listed.json()["items"]] == [note.json()["id"]]
            card = writer.post("/flashcards", json={"subject_id": subject, "front": "q",
                                                    "back": "a"}).json()
            reviewed = writer.post(f"/flashcards/{card['id']}/reviews", json={"rating": 4})
            assert reviewed.status_code == 201
            assert writer.get(f"/flashcards/{card['id']}").json()["reps"] == 1
            assert writer.get("/flashcards/due").json() == []  # the easy review took it out
            # Meanwhile a student who has not written reads the paused replica (stale title).
            stale = other.get(f"/notes/{other_note['id']}")
            assert stale.headers[READ_FROM] == "replica" and stale.json()["title"] == "before"
            h = api.wait_for(lambda h: h["replica"]["replay_paused"], "a probe to see the pause")
            assert h["replica"]["status"] == "ok" and h["replica"]["pinned_students"] >= 1
            again = writer.get(f"/notes/{note.json()['id']}")  # still pinned, still visible
            assert again.headers[READ_FROM] == "primary" and again.status_code == 200
        # Once the replica has replayed the writer's commit, its reads go back to the replica.
        api.wait_for(caught_up, "the replica to catch up after resume")
        back = writer.get(f"/notes/{note.json()['id']}")
        assert back.headers[READ_FROM] == "replica" and back.json()["body"] == "just written"


def test_reads_leave_a_lagging_replica_and_come_back(full_profile, cluster, subject):
    with running_api(full_profile, max_replica_lag_s=1.0) as api:
        s = register(api)
        note_id = s.post("/notes", json={"subject_id": subject, "title": "v1"}).json()["id"]
        api.wait_for(caught_up, "the replica to replay every write")
        with replay_paused(cluster):
            set_title_on_primary(full_profile, note_id, "v2")
            # Lag still under the bound: read from the replica, which has not replayed v2.
            r = s.get(f"/notes/{note_id}")
            assert (r.headers[READ_FROM], r.json()["title"]) == ("replica", "v1")
            h = api.wait_for(lambda h: h["replica"]["status"] == "lagging", "lag over 1 s")
            assert h["replica"]["lag_s"] > 1.0 and h["replica"]["lag_bytes"] > 0
            assert h["status"] == "degraded" and h["replica"]["serving_reads"] is False
            r = s.get(f"/notes/{note_id}")
            assert (r.headers[READ_FROM], r.json()["title"]) == ("primary", "v2")
        api.wait_for(lambda h: h["replica"]["status"] == "ok", "the replica to catch up")
        r = s.get(f"/notes/{note_id}")
        assert (r.headers[READ_FROM], r.json()["title"]) == ("replica", "v2")
        # Proof that reads are really served by the replica again: pause, change, read stale.
        with replay_paused(cluster):
            set_title_on_primary(full_profile, note_id, "v3")
            r = s.get(f"/notes/{note_id}")
            assert (r.headers[READ_FROM], r.json()["title"]) == ("replica", "v2")


def test_without_a_replica_every_read_is_on_the_primary(full_profile, subject):
    with running_api(full_profile, use_replica=False, use_pooler=False) as api:
        s = register(api)
        assert s.get("/notes").headers[READ_FROM] == "primary"
        h = api.health()
        assert h["replica"]["status"] == "disabled" and h["status"] == "ok"
        assert h["pooler"]["enabled"] is False and h["primary"]["via"] == "direct"


# ------------------------------------------------------------------------------- pooler
async def _mixed_traffic(api: RunningApi, subject: str, tokens: list[str], rounds: int,
                         concurrency: int) -> list[int]:
    statuses: list[int] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as c:
        async def one(i: int) -> None:
            h = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            async with sem:
                note = await c.post("/notes", headers=h, json={"subject_id": subject,
                                                               "title": f"n{i}"})
                card = await c.post("/flashcards", headers=h, json={"subject_id": subject,
                                                                    "front": "q", "back": "a"})
                statuses.extend([note.status_code, card.status_code])
                for r in await asyncio.gather(
                    c.get(f"/notes/{note.json()['id']}", headers=h),
                    c.get("/flashcards/due", headers=h),
                    c.post(f"/flashcards/{card.json()['id']}/reviews", headers=h,
                           json={"rating": 1 + i % 4}),
                ):
                    statuses.append(r.status_code)
        await asyncio.gather(*(one(i) for i in range(rounds)))
    return statuses


def test_pooled_traffic_leaves_no_prepared_statements_on_server_connections(full_profile,
                                                                            subject):
    with running_api(full_profile, use_pooler=True) as api:
        assert api.health()["primary"]["via"] == "pooler"
        tokens = [register(api).token for _ in range(4)]
        statuses = asyncio.run(_mixed_traffic(api, subject, tokens, rounds=120, concurrency=40))
    assert statuses and all(s in (200, 201) for s in statuses), sorted(set(statuses))
    # Hold 15 transactions open at once through PgBouncer: 15 distinct server connections,
    # none of which may keep a named prepared statement from the API's traffic.
    conns = [psycopg.connect(**full_profile.endpoint("pooler").conninfo(), prepare_threshold=None)
             for _ in range(15)]
    try:
        seen = [c.execute("SELECT pg_backend_pid(), array(SELECT name FROM pg_prepared_statements)"
                          ).fetchone() for c in conns]
    finally:
        for c in conns:
            c.close()
    assert len({pid for pid, _ in seen}) == 15
    assert [names for _, names in seen if names] == []


def test_asyncpg_default_statement_caches_fail_through_the_pooler(full_profile):
    """Why the caches are off: with asyncpg's and SQLAlchemy's defaults, concurrent clients of
    PgBouncer's transaction pooling trip over each other's named prepared statements."""
    ep = full_profile.endpoint("pooler")
    url = sa.URL.create("postgresql+asyncpg", username=ep.user, host=ep.host, port=ep.port,
                        database=ep.database)

    async def run() -> list[str]:
        engine = create_async_engine(url, connect_args={"passfile": str(ep.passfile),
                                                        "ssl": "disable"}, pool_size=30)
        errors: list[str] = []

        async def one(i: int) -> None:
            try:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT CAST(:x AS int) + 1"), {"x": i})
                    await conn.execute(sa.text(f"SELECT {i % 7} + CAST(:x AS int)"), {"x": i})
                    await conn.commit()
            except sa.exc.DBAPIError as exc:
                errors.append(str(exc.orig))

        await asyncio.gather(*(one(i) for i in range(300)))
        await engine.dispose()
        return errors

    errors = asyncio.run(run())
    assert errors and all("prepared statement" in e for e in errors)


# ------------------------------------------------------------------------ pure logic
def test_lag_tracker_measures_staleness_from_samples():
    t = LagTracker()
    assert t.observe(0.0, primary_lsn=100, replay_lsn=100) == 0.0  # caught up
    assert t.observe(1.0, primary_lsn=100, replay_lsn=100) == 0.0  # idle primary: still 0
    assert t.observe(2.0, primary_lsn=200, replay_lsn=100) == pytest.approx(1.0)
    assert t.observe(3.0, primary_lsn=300, replay_lsn=150) == pytest.approx(2.0)
    assert t.observe(4.0, primary_lsn=300, replay_lsn=200) == pytest.approx(2.0)
    assert t.observe(5.0, primary_lsn=300, replay_lsn=300) == 0.0
    fresh = LagTracker()
    assert fresh.observe(0.0, primary_lsn=500, replay_lsn=100) is None  # behind by unknown


def test_router_pins_a_writer_until_the_replica_replays_its_commit():
    async def never() -> None:  # the monitor is fed by hand below
        raise AssertionError

    monitor = ReplicaMonitor(never, never, max_lag_s=1, interval_s=0.2, timeout_s=1)
    router = ReadRouter(monitor, fallback_window_s=60)
    monitor._publish(ReplicaSnapshot("ok", time.monotonic(), lag_s=0, replay_lsn=1000))
    assert router.choose("alice") == "replica"
    router.note_write("alice", 1500)
    assert router.choose("alice") == "primary" and router.choose("bob") == "replica"
    monitor._publish(ReplicaSnapshot("ok", time.monotonic(), lag_s=0, replay_lsn=1500))
    assert router.choose("alice") == "replica" and router.pinned_students == 0
    router.note_write("bob", None)  # commit LSN unknown: pinned for the fallback window
    assert router.choose("bob") == "primary"
    monitor._publish(ReplicaSnapshot("lagging", time.monotonic(), lag_s=5, replay_lsn=2000))
    assert router.choose("alice") == "primary"
    monitor._publish(ReplicaSnapshot("ok", time.monotonic() - 60, lag_s=0, replay_lsn=2000))
    assert router.choose("alice") == "primary"  # a stale measurement is not trusted


# ----------------------------------------------------- dedicated cluster: stop things
@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalCluster]:
    """Primary + replica + pooler of our own: these tests stop the replica and the pooler."""
    home = make_home("studyhub-api-")
    c = LocalCluster(home)
    try:
        c.up(replica=True, pooler=True)
        migrate.upgrade(c.profile())
        yield c
    finally:
        c.destroy()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_stopping_the_replica_mid_traffic_fails_no_request(own_cluster):
    profile = own_cluster.profile()
    subject = make_subject(profile)
    # A slow probe, so reads reach the dying replica before the monitor notices and must fail
    # over by themselves.
    with running_api(profile, replica_probe_interval_s=3.0) as api:
        tokens = [register(api).token for _ in range(6)]
        api.wait_for(caught_up, "the replica to replay the registrations")
        failures: list[str] = []
        sources = {"before": set(), "after": set()}
        phase = "before"
        stop = threading.Event()

        async def traffic() -> None:
            async with httpx.AsyncClient(base_url=api.url, timeout=60) as c:
                async def client(token: str, writes: bool) -> None:
                    h = {"Authorization": f"Bearer {token}"}
                    n = 0
                    while not stop.is_set():
                        n += 1
                        try:
                            rs = [await c.get("/notes", headers=h),
                                  await c.get("/flashcards/due", headers=h)]
                            if writes and n % 5 == 0:
                                rs.append(await c.post("/notes", headers=h, json={
                                    "subject_id": subject, "title": f"n{n}"}))
                        except httpx.HTTPError as exc:
                            failures.append(repr(exc))
                            continue
                        for r in rs:
                            if r.status_code >= 400:
                                failures.append(f"{r.status_code} {r.text}")
                            if READ_FROM in r.headers:
                                sources[phase].add(r.headers[READ_FROM])
                # Half the students only read: no read-your-writes pinning moves them off the
                # replica before it dies.
                await asyncio.gather(*(client(t, i % 2 == 0) for i, t in enumerate(tokens)))

        runner = threading.Thread(target=lambda: asyncio.run(traffic()))
        runner.start()
        try:
            time.sleep(1.5)
            phase = "after"
            own_cluster.stop_node("replica")  # pg_ctl stop -m fast
            time.sleep(2.0)
        finally:
            stop.set()
            runner.join(60)
        assert failures == []
        assert "replica" in sources["before"]
        h = api.health()
        assert h["replica"]["status"] == "down" and h["status"] == "degraded"
        assert h["replica"]["fallbacks"] >= 1
        # Reads come back to the replica once it is up again (on its recorded port).
        own_cluster.start_node("replica")
        api.wait_for(lambda h: h["replica"]["status"] == "ok", "the replica to return")
        with api.client(headers={"Authorization": f"Bearer {tokens[0]}"}) as c:
            assert c.get("/notes").headers[READ_FROM] == "replica"


@pytest.mark.slow
def test_health_tells_a_dead_pooler_from_a_dead_primary(own_cluster):
    profile = own_cluster.profile()
    with running_api(profile) as api:
        s = register(api)
        own_cluster.stop_pooler()
        try:
            with api.client() as c:
                r = c.get("/health")
            assert r.status_code == 503
            h = r.json()
            assert h["status"] == "down"
            assert h["pooler"]["ok"] is False and h["pooler"]["error"]
            assert h["primary"]["ok"] is True and h["primary"]["via"] == "pooler"
            w = s.post("/notes", json={"subject_id": str(uuid.uuid4()), "title": "t"})
            assert w.status_code == 503
            assert w.json() == {"detail": "database unavailable, try again shortly"}
        finally:  # restart it on the same port, with the same configuration
            own_cluster.start_pooler()
        api.wait_for(lambda h: h["status"] == "ok", "the pooler to return")
        assert s.post("/notes", json={"subject_id": make_subject(profile),
                                      "title": "t"}).status_code == 201
