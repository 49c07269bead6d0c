"""Read-your-writes across API processes: a write answered by one app instance hands the client a
signed read mark (header and cookie); a read served by another instance, which never saw the
write, honours it. Marks are bound to their student, tamper-proof, expire, and never widen what
anyone can read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from studyhub.api.read_marks import MARK_COOKIE, MARK_HEADER, ReadAfter, ReadMarks
from studyhub.api.replica import parse_lsn
from studyhub.ops.connection_budget import connection_budget
from studyhub.profiles import Profile
from studyhub.serving import ApiSettings
from tests.api_helpers import RunningApi, make_subject, register, running_api
from tests.conftest import connect_as
from tests.test_api_routing import READ_FROM, caught_up, replay_paused
from tests.test_secrets import CmdlineWatcher, _passwords


@pytest.fixture(scope="module")
def full_profile(migrated, with_replica, with_pooler) -> Profile:
    return with_pooler.profile()


@pytest.fixture(scope="module")
def subject(full_profile) -> str:
    return make_subject(full_profile)


@pytest.fixture(scope="module")
def two_apis(full_profile):
    """Two independent API instances on one cluster, as two workers or two machines behind a
    load balancer: each has its own pools, replica monitor and in-process write map. A lag
    bound far above the tests' duration, so only read-your-writes can keep a read off the
    paused replica."""
    with ExitStack() as stack:
        yield tuple(stack.enter_context(running_api(full_profile, max_replica_lag_s=120))
                    for _ in range(2))


def quiet(*apis: RunningApi) -> None:
    """Until every instance has seen the replica replay everything the primary has now (with a
    lag bound of 120 s, "status ok" alone would not say so)."""
    with connect_as(apis[0].profile) as conn:
        now = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    for api in apis:
        api.wait_for(lambda h: caught_up(h) and parse_lsn(h["replica"]["replay_lsn"]) >= now,
                     "the replica to replay every write")


def test_a_write_on_one_instance_is_read_on_another_through_the_cookie(two_apis, cluster,
                                                                        subject):
    a, b = two_apis
    with httpx.Client(timeout=30) as browser:  # one cookie jar for both (cookies ignore ports)
        account = {"email": f"{uuid.uuid4().hex[:12]}@test.studyhub",
                   "password": "pw-" + "x" * 20}
        r = browser.post(f"{a.url}/auth/register", json={**account, "full_name": "Cookie Student"})
        assert r.status_code == 202 and MARK_COOKIE not in browser.cookies
        r = browser.post(f"{a.url}/auth/token", json=account)
        assert r.status_code == 200 and MARK_COOKIE in browser.cookies
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        quiet(a, b)
        with replay_paused(cluster):
            note = browser.post(f"{a.url}/notes", headers=auth, json={
                "subject_id": subject, "title": "written on A", "body": "fresh"})
            assert note.status_code == 201 and note.headers[MARK_HEADER]
            got = browser.get(f"{b.url}/notes/{note.json()['id']}", headers=auth)
            assert got.status_code == 200, got.text
            assert got.json()["body"] == "fresh" and got.headers[READ_FROM] == "primary"
            listed = browser.get(f"{b.url}/notes", headers=auth).json()["items"]
            assert [n["id"] for n in listed] == [note.json()["id"]]
            # B has no memory of the write: without the mark its read goes to the paused replica
            # and misses the note (so the mark, not anything else, routed the reads above).
            assert b.health()["replica"]["pinned_students"] == 0
            with httpx.Client(timeout=30) as no_cookies:
                blind = no_cookies.get(f"{b.url}/notes/{note.json()['id']}", headers=auth)
                assert blind.status_code == 404
                blind = no_cookies.get(f"{b.url}/notes", headers=auth)
            assert (blind.json()["items"], blind.headers[READ_FROM]) == ([], "replica")
        quiet(a, b)
        back = browser.get(f"{b.url}/notes/{note.json()['id']}", headers=auth)
        assert back.headers[READ_FROM] == "replica"  # replayed: the mark no longer pins


def test_a_new_account_is_found_by_its_first_reads_on_another_instance(two_apis, cluster):
    """Registration hands out no read mark (it answers every address alike); the sign-in after
    it reads on the primary and hands one out, so the new student's first reads on another
    instance find the account although the replica has not replayed it."""
    a, b = two_apis
    account = {"email": f"{uuid.uuid4().hex[:12]}@test.studyhub", "password": "pw-" + "y" * 20}
    quiet(a, b)
    with replay_paused(cluster), httpx.Client(timeout=30) as browser:
        r = browser.post(f"{a.url}/auth/register", json={**account, "full_name": "New Student"})
        assert r.status_code == 202 and MARK_HEADER not in r.headers
        r = browser.post(f"{a.url}/auth/token", json=account)
        assert r.status_code == 200 and r.headers[MARK_HEADER]
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        me = browser.get(f"{b.url}/me", headers=auth)
        assert me.status_code == 200 and me.json()["email"] == account["email"]
        assert me.headers[READ_FROM] == "primary"
        with httpx.Client(timeout=30) as no_cookies:  # without the mark: the paused replica,
            blind = no_cookies.get(f"{b.url}/me", headers=auth)  # which has no such student
        assert blind.status_code == 404


def test_a_client_without_cookies_echoes_the_header(two_apis, cluster, subject):
    a, b = two_apis
    s = register(a)
    card = s.post("/flashcards", json={"subject_id": subject, "front": "q", "back": "a"}).json()
    quiet(a, b)
    with replay_paused(cluster), httpx.Client(base_url=b.url, timeout=30) as on_b, \
            httpx.Client(base_url=a.url, timeout=30) as on_a:
        reviewed = on_a.post(f"/flashcards/{card['id']}/reviews", headers=s.headers,
                             json={"rating": 3})
        assert reviewed.status_code == 201
        mark = reviewed.headers[MARK_HEADER]
        got = on_b.get(f"/flashcards/{card['id']}", headers={**s.headers, MARK_HEADER: mark})
        assert got.headers[READ_FROM] == "primary" and got.json()["reps"] == 1
        assert on_b.get(f"/flashcards/{card['id']}",
                        headers=s.headers).json()["reps"] == 0  # no mark: the stale replica


def test_a_mark_is_bound_to_its_student_and_cannot_be_forged(two_apis, cluster, subject):
    a, b = two_apis
    writer, other = register(a), register(a)
    quiet(a, b)
    with replay_paused(cluster), httpx.Client(base_url=b.url, timeout=30) as on_b:
        note = writer.post("/notes", json={"subject_id": subject, "title": "private"})
        mark = note.headers[MARK_HEADER]
        ignored_before = b.health()["replica"]["marks_ignored"]
        # Another student presenting it: ignored (read on the replica) and, as ever, no access.
        stolen = on_b.get(f"/notes/{note.json()['id']}",
                          headers={**other.headers, MARK_HEADER: mark})
        assert stolen.status_code == 404
        stolen = on_b.get("/notes", headers={**other.headers, MARK_HEADER: mark})
        assert (stolen.json()["items"], stolen.headers[READ_FROM]) == ([], "replica")
        # The writer's own mark with its position changed (say, to stay on the primary for
        # ever): ignored too.
        version, _lsn, expires, mac = mark.split(".")
        forged = f"{version}.ffffffffff.{expires}.{mac}"
        r = on_b.get("/notes", headers={**writer.headers, MARK_HEADER: forged})
        assert (r.json()["items"], r.headers[READ_FROM]) == ([], "replica")
        assert b.health()["replica"]["marks_ignored"] == ignored_before + 3
        genuine = on_b.get(f"/notes/{note.json()['id']}",
                           headers={**writer.headers, MARK_HEADER: mark})
        assert genuine.status_code == 200 and genuine.headers[READ_FROM] == "primary"


def test_read_marks_sign_expire_and_hide_the_student():
    marks = ReadMarks("s" * 40, ttl_s=300)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    mark = marks.issue(alice, 0x3A0B1C8, unknown_lsn_pin_s=10, now=1000.0)
    assert str(alice) not in mark and alice.hex not in mark
    assert marks.verify(mark, alice, now=1000.0) == ReadAfter(0x3A0B1C8, 1301.0)
    assert marks.verify(mark, bob, now=1000.0) is None  # someone else's
    assert marks.verify(mark, alice, now=1302.0) is None  # expired
    assert ReadMarks("t" * 40, ttl_s=300).verify(mark, alice, now=1000.0) is None  # other key
    for bad in ("", "1.2.3", "garbage", mark + "x", "2" + mark[1:], "1." + "a" * 200):
        assert marks.verify(bad, alice, now=1000.0) is None
    unknown = marks.verify(marks.issue(alice, None, unknown_lsn_pin_s=10, now=1000.0), alice,
                           now=1000.0)
    assert unknown == ReadAfter(0, 1011.0)  # commit position unknown: primary for 10 s
    assert unknown.merge(ReadAfter(5, 2000.0)) == unknown  # "primary" wins over a position
    assert ReadAfter(5, 1500.0).merge(ReadAfter(9, 1200.0)) == ReadAfter(9, 1500.0)


def test_connection_budget_warns_when_workers_outgrow_max_connections(full_profile):
    from studyhub.serving import choose_topology

    direct = ApiSettings(workers=4, pool_size=30, use_pooler=False, use_replica=True,
                         replica_pool_size=20)
    primary, replica = connection_budget(full_profile, direct,
                                         choose_topology(full_profile, direct))
    assert (primary.server, primary.connections, primary.max_connections) == ("primary", 124, 100)
    assert primary.over_limit
    assert (replica.server, replica.connections, replica.over_limit) == ("replica", 84, False)
    pooled = ApiSettings(workers=4, pool_size=30, use_pooler=True, use_replica=False)
    (bouncer,) = connection_budget(full_profile, pooled, choose_topology(full_profile, pooled))
    assert (bouncer.server, bouncer.connections, bouncer.over_limit) == ("PgBouncer", 124, False)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_serve_with_workers_shares_tokens_and_marks_without_secrets_on_argv(
        full_profile, cluster, cluster_home, subject):
    secret = "api-secret-" + "w" * 40
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(STUDYHUB_HOME=str(cluster_home), STUDYHUB_API_SECRET=secret)
    url = f"http://127.0.0.1:{port}"
    with CmdlineWatcher(_passwords(cluster) + [secret], "spawn_main") as watch:
        server = subprocess.Popen(
            [sys.executable, "-m", "studyhub.cli.main", "serve", "--port", str(port),
             "--workers", "2", "--pool-size", "3", "--max-replica-lag", "120"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert server.poll() is None, server.communicate()[0]
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200 and \
                            len(_descendants(server.pid)) >= 2:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            workers = [p for p in _descendants(server.pid)
                       if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            assert len(workers) == 2
            api = RunningApi(url, None, full_profile)
            quiet(api)
            # The command line's options reached the spawned workers (through the environment).
            assert {api.health()["replica"]["max_lag_s"] for _ in range(8)} == {120.0}
            # Every request on a new connection: the kernel hands each to either worker. Tokens
            # and marks made by one are honoured by the other (same secret, from the env).
            with replay_paused(cluster):
                s = register(api)
                for i in range(6):
                    with httpx.Client(base_url=url, timeout=30) as c:
                        note = c.post("/notes", headers=s.headers, json={
                            "subject_id": subject, "title": f"n{i}"})
                        assert note.status_code == 201, note.text
                        mark = note.headers[MARK_HEADER]
                    with httpx.Client(base_url=url, timeout=30) as c:
                        got = c.get(f"/notes/{note.json()['id']}",
                                    headers={**s.headers, MARK_HEADER: mark})
                        assert got.status_code == 200 and got.headers[READ_FROM] == "primary"
        finally:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=60)[0]
    assert "2 worker(s); connections at most: PgBouncer 8, replica 8 of max_connections 100" \
        in output, output
    assert watch.seen_target > 0 and watch.leaks == []
    assert secret not in output
