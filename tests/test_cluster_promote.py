"""``cluster forks promote``: DigitalOcean (the fake API; the profile's endpoint switched in the
profile file studyhub owns) and the local cluster (the fork takes over the primary's role)."""

from __future__ import annotations

import json
import shutil
import tomllib
import uuid
from datetime import datetime, timezone

import psycopg
import pytest

from studyhub.local import LocalCluster
from studyhub.ops import migrate
from studyhub.profile_files import profile_file, profiles_dir
from tests.conftest import make_home
from tests.test_cluster_do import do, do_server, run  # noqa: F401 - fixtures

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def clean_profiles_d():
    yield
    shutil.rmtree(profiles_dir(), ignore_errors=True)


def test_do_promote_switches_the_profile_to_the_fork(cli, do, cluster, clean_profiles_d):
    fid = do.fake.add_cluster("staging-restore", tags=["studyhub-fork"])
    do.fake.clusters[fid]["connection"]["host"] = "localhost"  # another endpoint, same server
    path = profile_file("staging")

    res = run(cli, "forks", "promote", "staging-restore", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert do.fake.requests == [] and "dry run: nothing was sent" in res.stdout
    res = run(cli, "forks", "promote", "staging-restore")
    assert res.exit_code == 1 and "needs confirmation" in res.stderr
    assert f"→ fork staging-restore localhost:{do.fake.connection_port}" in res.stdout
    assert '  +host = "localhost"' in res.stdout and f'  +do_cluster_id = "{fid}"' in res.stdout
    assert not path.exists()

    out = _json(run(cli, "forks", "promote", "staging-restore", "--yes", "--json"))
    assert out["result"]["details"]["to_cluster"] == fid
    assert not [r for r in do.fake.requests if r.method in WRITES]  # the old cluster untouched
    written = path.read_text()
    assert written.startswith("# written by studyhub; edit studyhub.toml instead\n")
    assert tomllib.loads(written) == {"host": "localhost", "port": do.fake.connection_port,
                                      "do_cluster_id": fid, "replicas": []}
    audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
    assert audit["action"] == "cluster.fork.promote" and audit["outcome"] == "ok"
    assert audit["from_cluster"] == do.cid and audit["to_cluster"] == fid

    # the promoted fork is the profile's primary now: `forks remove` refuses to destroy it
    res = run(cli, "forks", "remove", "staging-restore", "--yes")
    assert res.exit_code == 1 and "refusing to destroy the profile's own cluster" in res.stderr
    assert fid in do.fake.clusters

    # someone edits the file: the next promotion refuses and shows the diff
    path.write_text(written + 'note = "my own edit"\n')  # (still valid TOML: it is read)
    other = do.fake.add_cluster("staging-other", tags=["studyhub-fork"])
    res = run(cli, "forks", "promote", "staging-other", "--yes")
    assert res.exit_code == 1
    assert "was changed outside studyhub" in res.stderr and f'+do_cluster_id = "{other}"' \
        in res.stderr
    assert path.read_text().endswith('note = "my own edit"\n')


def test_do_promote_refuses_a_fork_still_recovering_and_an_unknown_one(cli, do,
                                                                       clean_profiles_d):
    fid = do.fake.add_cluster("staging-young", tags=["studyhub-fork"])
    do.fake.clusters[fid]["status"] = "creating"
    res = run(cli, "forks", "promote", "staging-young", "--yes")
    assert res.exit_code == 1 and "is still creating (recovering)" in res.stderr
    res = run(cli, "forks", "promote", "no-such-fork", "--yes")
    assert res.exit_code == 1 and "no fork named 'no-such-fork'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not profile_file("staging").exists()


def test_local_promote_refuses_a_fork_that_never_finished_recovery(cli, cluster):
    name = f"half-{uuid.uuid4().hex[:6]}"
    cluster.forks_dir.mkdir(exist_ok=True)
    meta = cluster.forks_dir / f"{name}.json"
    now = datetime.now(timezone.utc).isoformat()
    meta.write_text(json.dumps({"name": name, "port": 1, "target_time": now, "created_at": now,
                                "status": "restoring"}))
    try:
        res = cli("cluster", "forks", "promote", name, "--yes")
        assert res.exit_code == 1 and "never finished recovery" in res.stderr
        res = cli("cluster", "forks", "promote", "not-a-fork", "--yes")
        assert res.exit_code == 1 and "no fork named 'not-a-fork'" in res.stderr
    finally:
        meta.unlink()


@pytest.mark.slow
def test_local_promote_the_fork_takes_over_the_primary(cli, monkeypatch):
    """Own cluster with a replica: fork at a moment, write more on the primary, promote → the
    primary's port serves the fork's data, the old primary is kept stopped and renamed, the
    replica streams from the new primary."""
    home = make_home("studyhub-promote-")
    own = LocalCluster(home)
    try:
        own.up(replica=True)
        monkeypatch.setenv("STUDYHUB_HOME", str(home))
        prof = own.profile()
        migrate.upgrade(prof)
        port = prof.port
        url = prof.endpoint("app").conninfo()
        with psycopg.connect(**url, autocommit=True) as conn:
            conn.execute("INSERT INTO subjects (code, name) VALUES ('before', 'Before')")
        assert cli("cluster", "basebackup").exit_code == 0
        res = cli("cluster", "fork", "--at", "now", "--name", "takeover", "--yes")
        assert res.exit_code == 0, res.stderr
        with psycopg.connect(**url, autocommit=True) as conn:
            conn.execute("INSERT INTO subjects (code, name) VALUES ('after', 'After')")
        old_pid = own.status().primary.pid

        res = cli("cluster", "forks", "promote", "takeover", "--dry-run")
        assert res.exit_code == 0 and "re-seed the replica" in res.stdout
        assert own.status().primary.pid == old_pid
        out = _json(cli("cluster", "forks", "promote", "takeover", "--yes", "--json"))
        details = out["result"]["details"]
        assert details["port"] == port and details["replica_reseeded"] is True

        with psycopg.connect(**url, autocommit=True) as conn:  # same port, the fork's data
            codes = {r[0] for r in conn.execute("SELECT code FROM subjects")}
            assert "before" in codes and "after" not in codes
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
            conn.execute("INSERT INTO subjects (code, name) VALUES ('new', 'New')")
        replaced = home / details["replaced"].rsplit("/", 1)[1]
        assert (replaced / "PG_VERSION").exists() and not (replaced / "postmaster.pid").exists()
        status = own.status()
        assert status.primary.pid != old_pid and status.replica_streaming
        assert not (own.forks_dir / "takeover").exists()
        rep = prof.endpoint("replica").conninfo()
        from tests.diag_helpers import wait_for

        def replicated() -> bool:
            with psycopg.connect(**rep, autocommit=True) as conn:
                codes = {r[0] for r in conn.execute("SELECT code FROM subjects")}
            return "new" in codes and "after" not in codes

        wait_for(replicated, what="the new primary's row on the replica")
        audit = json.loads(own.audit_log.read_text().splitlines()[-1])
        assert audit["action"] == "cluster.fork.promote" and audit["outcome"] == "ok"
    finally:
        own.destroy()
        shutil.rmtree(home, ignore_errors=True)
