"""Several read replicas: profiles with a list of read endpoints (old single-replica settings
still work), the profile files the commands own (profiles.d, a hand-edited one refused with
its diff), ``local up --replicas N`` (real streaming replicas, each its own slot and port), and
``cluster replica add|remove`` / ``pool add|remove`` recording what changed in the profile
(local cluster; DigitalOcean through the fake API)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from studyhub.connect import connect
from studyhub.errors import ConfigError, RefusedError
from studyhub.local import LocalCluster
from studyhub.profile_files import HEADER, profile_file, update_profile_file
from studyhub.profiles import Profile, ReadEndpoint, resolve_profile
from tests.conftest import make_home
from tests.test_cluster_do import do, do_server, run  # noqa: F401 (fixtures)


def _profile(**kw) -> Profile:
    base = dict(name="staging", kind="remote", host="db.example", port=25060, database="d",
                sslmode="require", users={"app": "a", "ops": "o", "admin": "x"})
    return Profile(**{**base, **kw})


# ------------------------------------------------------------------ profiles as data
def test_a_profile_with_the_old_single_replica_settings_gets_one_read_endpoint():
    p = _profile(replica_host="r.example", replica_port=25061)
    assert p.replicas == (ReadEndpoint("replica", "r.example", 25061),)
    assert (p.endpoint("replica").host, p.endpoint("replica").port) == ("r.example", 25061)
    assert _profile().replicas == () and _profile().replica_port is None


def test_a_profile_with_several_read_endpoints_connects_to_each_by_name():
    p = _profile(replicas=(ReadEndpoint("read-a", "a.example", 1, "nyc3"),
                           ReadEndpoint("read-b", "b.example", 2, "fra1")))
    assert (p.replica_host, p.replica_port) == ("a.example", 1)  # the first, for old code
    assert p.endpoint("replica").host == "a.example"
    assert p.endpoint("replica", "other", replica="read-b").host == "b.example"
    assert p.endpoint("replica", replica="read-b").database == "d"
    with pytest.raises(ConfigError, match=r"no replica named 'nope' \(replicas: read-a, read-b\)"):
        p.endpoint("replica", replica="nope")
    assert [r["name"] for r in p.describe()["replicas"]] == ["read-a", "read-b"]
    # replacing the old fields moves the first endpoint; clearing them clears the list
    moved = dataclasses.replace(p, replica_host="c.example", replica_port=3)
    assert [(r.name, r.host) for r in moved.replicas] == [("read-a", "c.example"),
                                                         ("read-b", "b.example")]
    assert dataclasses.replace(p, replica_host=None, replica_port=None).replicas == ()


# ---------------------------------------------------------------------- profiles.d
@pytest.fixture
def staging_env(monkeypatch, tmp_path):
    config = tmp_path / "studyhub.toml"
    config.write_text('[staging]\nhost = "db.example"\nreplica_host = "old.example"\n'
                      'replica_port = 25060\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(config))
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))
    monkeypatch.setenv("STUDYHUB_PROFILES_DIR", str(tmp_path / "profiles.d"))
    return config


def test_a_profile_file_is_merged_over_studyhub_toml_which_is_never_rewritten(staging_env):
    before = staging_env.read_text()
    assert [r.host for r in resolve_profile("staging").replicas] == ["old.example"]
    path = update_profile_file("staging", lambda v: {**v, "pooler_database": "pool1",
                                                     "replicas": [
        {"name": "read-a", "host": "a.example", "port": 25060, "region": "nyc3"},
        {"name": "read-b", "host": "b.example", "port": 25060, "region": "fra1"}]})
    assert path.read_text().startswith(HEADER + "\n")
    p = resolve_profile("staging")
    assert [(r.name, r.host, r.region) for r in p.replicas] == [
        ("read-a", "a.example", "nyc3"), ("read-b", "b.example", "fra1")]
    assert p.pooler_database == "pool1" and p.host == "db.example"
    assert staging_env.read_text() == before
    update_profile_file("staging", lambda v: {**v, "replicas": []})  # the last one removed
    assert resolve_profile("staging").replicas == ()  # not the old replica_host again


def test_a_hand_edited_profile_file_is_refused_with_the_diff(staging_env):
    update_profile_file("staging", lambda v: {"pooler_database": "pool1"})
    path = profile_file("staging")
    path.write_text(path.read_text().replace('"pool1"', '"mine"'))
    with pytest.raises(RefusedError) as err:
        update_profile_file("staging", lambda v: {**v, "pooler_database": "pool2"})
    text = str(err.value)
    assert "edited by someone else" in text
    assert '-pooler_database = "pool1"' in text and '+pooler_database = "mine"' in text
    assert "mine" in path.read_text()  # nothing written
    other = profile_file("production")  # a file made by hand is not ours either
    other.write_text('pooler_database = "byhand"\n')
    with pytest.raises(RefusedError, match=r'(?s)no file written by studyhub.*\+pooler_database'):
        update_profile_file("production", lambda v: v)
    assert other.read_text() == 'pooler_database = "byhand"\n'


# ------------------------------------------------------------- local: N replicas
@pytest.mark.slow
def test_local_up_with_two_replicas_streams_both_and_lists_both_in_the_profile(cli, monkeypatch):
    home = make_home("studyhub-replicas-")
    monkeypatch.setenv("STUDYHUB_HOME", str(home))
    own = LocalCluster(home)
    try:
        res = cli("local", "up", "--replicas", "2", "--json")
        assert res.exit_code == 0, res.stderr
        st = json.loads(res.stdout)
        assert [(r["name"], r["running"], r["streaming"]) for r in st["replicas"]] == [
            ("replica", True, True), ("replica2", True, True)]
        prof = own.profile()
        assert [r.name for r in prof.replicas] == ["replica", "replica2"]
        ports = {prof.port, *(r.port for r in prof.replicas)}
        assert len(ports) == 3  # each replica its own port
        with own.admin_connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t_rep (x int)")
            slots = {r[0] for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE active")}
        assert slots == {"studyhub_replica", "studyhub_replica2"}
        for r in prof.replicas:  # each is a hot standby of this primary
            with connect(prof, "replica", replica=r.name) as conn:
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert "replica2" in cli("local", "status").stdout
        res = cli("local", "url", "--role", "replica", "--replica", "replica2")
        assert f"@127.0.0.1:{prof.replicas[1].port}/" in res.stdout
        res = cli("local", "url", "--role", "replica", "--replica", "replica7")
        assert res.exit_code == 1 and "no replica named 'replica7'" in res.stderr

        res = cli("local", "up", "--replicas", "9")
        assert res.exit_code == 1 and "--replicas must be 0-8" in res.stderr
        res = cli("cluster", "replica", "remove", "nope", "--yes")
        assert res.exit_code == 1
        assert "no replica named 'nope' (replicas: replica, replica2)" in res.stderr
        res = cli("cluster", "replica", "remove", "replica2", "--yes")
        assert res.exit_code == 0, res.stderr
        assert "reads from: replica 127.0.0.1" in res.stdout
        assert [r.name for r in own.profile().replicas] == ["replica"]
        assert not (own.replicas_dir / "replica2").exists()
        with own.admin_connect() as conn:
            assert [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")] \
                == ["studyhub_replica"]
        res = cli("cluster", "replica", "add", "--yes")  # the next free name again
        assert res.exit_code == 0, res.stderr
        assert [r.name for r in own.profile().replicas] == ["replica", "replica2"]

        st = own.down()
        assert not st.primary.running and not any(r.running for r in st.replicas)
        assert [r.name for r in st.replicas] == ["replica", "replica2"]
        assert own.replicas_dir in own.destroy_plan()
        own.destroy()
        assert not own.replicas_dir.exists() and not own.replica_dir.exists()
    finally:
        own.destroy()
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------ DigitalOcean (fake API)
def test_do_replica_add_and_remove_update_the_profile_file(cli, do):
    res = run(cli, "replica", "add", "--name", "read-fra1-01", "--region", "fra1",
              "--size", "db-s-2vcpu-4gb", "--yes", "--poll-interval", "0")
    assert res.exit_code == 0, res.stderr
    assert "profile staging reads from: read-fra1-01" in res.stdout
    prof = resolve_profile("staging")
    [ep] = prof.replicas
    assert (ep.name, ep.region, ep.port) == ("read-fra1-01", "fra1", do.fake.connection_port)
    assert profile_file("staging").read_text().startswith(HEADER)
    # the endpoint recorded is one the app can use: the fake points it at a real server
    with connect(prof, "replica", replica="read-fra1-01") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    res = run(cli, "replica", "remove", "read-fra1-01", "--yes")
    assert res.exit_code == 0, res.stderr
    assert resolve_profile("staging").replicas == ()
    assert "reads from: the primary only" in res.stdout


def test_do_replica_add_in_a_region_the_provider_does_not_offer_is_one_line(cli, do):
    res = run(cli, "replica", "add", "--name", "read-mars", "--region", "mars1", "--yes")
    assert res.exit_code == 1
    assert res.stderr.strip() == ("error: region 'mars1' is not offered for PostgreSQL; "
                                  "choose one of: ams3, fra1, nyc3, sfo3")
    assert do.fake.sent("POST") == []


def test_do_change_with_a_hand_edited_profile_file_is_refused_before_sending(cli, do):
    update_profile_file("staging", lambda v: {"pooler_database": "pool1"})
    path = profile_file("staging")
    path.write_text(path.read_text() + 'host = "my-own-edit"\n')
    res = run(cli, "replica", "add", "--name", "read-nyc3-02", "--yes")
    assert res.exit_code == 1
    assert "edited by someone else" in res.stderr and '+host = "my-own-edit"' in res.stderr
    assert do.fake.sent("POST") == [] and do.fake.replicas[do.cid] == {}


def test_do_pool_add_and_remove_record_the_pooler(cli, do):
    res = run(cli, "pool", "add", "--name", "app-pool", "--size", "5", "--yes")
    assert res.exit_code == 0, res.stderr
    prof = resolve_profile("staging")
    assert (prof.pooler_database, prof.pooler_port) == ("app-pool", do.fake.connection_port + 1)
    assert prof.endpoint("pooler").database == "app-pool"
    res = run(cli, "pool", "add", "--name", "other-pool", "--size", "5", "--yes")
    assert res.exit_code == 0, res.stderr
    assert resolve_profile("staging").pooler_database == "other-pool"
    res = run(cli, "pool", "remove", "other-pool", "--yes")
    assert res.exit_code == 0, res.stderr
    assert resolve_profile("staging").pooler_database == "app-pool"  # the pool that is left
    assert [r.method for r in do.fake.sent("DELETE")] == ["DELETE"]


def test_a_broken_profile_file_is_one_clear_error(staging_env):
    update_profile_file("staging", lambda v: {"pooler_database": "pool1"})
    profile_file("staging").write_text('port = 1\nport = 2\n')
    with pytest.raises(ConfigError, match=r"staging.toml is not valid TOML \(.*line 2.*\)"):
        resolve_profile("staging")
