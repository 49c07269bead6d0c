"""``studyhub cluster`` on DigitalOcean: the real pydo client against a fake of the API
(tests/fake_digitalocean.py) served over TLS with a throwaway CA. The fake's clusters point their
connection at the session's local PostgreSQL, so a fork's verification runs real SQL."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from studyhub.ops.cluster import digitalocean_api
from tests.fake_digitalocean import FakeDigitalOcean, serve_tls

BASE = "/v2/databases"


@pytest.fixture(scope="module")
def do_server(tmp_path_factory):
    fake = FakeDigitalOcean()
    server = serve_tls(fake, tmp_path_factory.mktemp("do-tls"))
    yield fake, server
    server.stop()


@pytest.fixture
def do(do_server, cluster, migrated, monkeypatch, tmp_path):
    """A staging profile whose do_cluster_id lives in the fake API and whose database is the
    session's local cluster (over TLS, sslmode=require)."""
    fake, server = do_server
    fake.reset()
    fake.polls_until_online = 2
    fake.max_per_page = 200
    fake.connection_port = migrated.port
    cid = fake.add_cluster("studyhub-staging")
    passwords = {line.split(":")[3]: line.split(":")[4]
                 for line in cluster.passfile.read_text().splitlines()}
    env = {
        "DIGITALOCEAN_TOKEN": fake.token,
        "STUDYHUB_DO_API_URL": server.url,
        "STUDYHUB_DO_CA_BUNDLE": str(server.ca_file),
        "STUDYHUB_CONFIG": str(tmp_path / "absent.toml"),
        "STUDYHUB_SECRETS_FILE": str(tmp_path / "absent-secrets.toml"),
        "STUDYHUB_PROFILES_DIR": str(tmp_path / "profiles.d"),  # what replica/pool changes record
        "STUDYHUB_STAGING_HOST": "127.0.0.1",
        "STUDYHUB_STAGING_PORT": str(migrated.port),
        "STUDYHUB_STAGING_DATABASE": "studyhub",
        "STUDYHUB_STAGING_DO_CLUSTER_ID": cid,
        "STUDYHUB_STAGING_PASSWORD": passwords["studyhub_app"],
        "STUDYHUB_STAGING_OPS_PASSWORD": passwords["studyhub_ops"],
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(digitalocean_api, "RETRY_BACKOFF_FACTOR", 0.01)
    return SimpleNamespace(fake=fake, cid=cid, server=server, passwords=passwords)


def calls(fake: FakeDigitalOcean) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests]


def run(cli, *args):
    return cli("cluster", *args, "--profile", "staging")


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_fork_creates_a_cluster_from_backup_waits_and_verifies(cli, do, cluster):
    at = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(microsecond=0)
    out = _json(run(cli, "fork", "--at", at.isoformat(), "--name", "staging-restore", "--yes",
                    "--poll-interval", "0.01", "--json"))
    [post] = do.fake.sent("POST")
    assert post.path == BASE
    assert post.body == {
        "name": "staging-restore", "engine": "pg", "version": "15", "region": "nyc3",
        "size": "db-s-1vcpu-2gb", "num_nodes": 1,
        "tags": ["studyhub-fork", "studyhub-at-" + at.strftime("%Y%m%dt%H%M%Sz")],
        "backup_restore": {"database_name": "studyhub-staging",
                           "backup_created_at": at.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "private_network_uuid": "9423cbad-9211-442f-820b-ef6915e99b5f",
        "project_id": "5c3c1d3e-0000-4000-8000-000000000001",
    }
    new_id = out["result"]["fork"]["id"]
    # read the source and its backups, create, then poll the new cluster until online
    assert calls(do.fake) == [("GET", f"{BASE}/{do.cid}"), ("GET", f"{BASE}/{do.cid}/backups"),
                              ("POST", BASE)] + [("GET", f"{BASE}/{new_id}")] * 2
    fork = out["result"]["fork"]
    assert fork["status"] == "online"
    assert fork["target_time"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    port = cluster.load_state().primary_port
    assert fork["url"] == f"postgresql://studyhub_app@127.0.0.1:{port}/studyhub?sslmode=require"
    verification = out["result"]["verification"]
    assert verification["error"] is None and verification["database"] == "studyhub"
    assert {t["table"] for t in verification["tables"]} >= {"students", "subjects", "notes"}
    # The erasure ledger was read from the source and re-applied through the same connection
    # path (the fake's fork is the session database: nobody erased is present in it).
    erasures = out["result"]["erasures"]
    assert erasures["status"] in ("reapplied", "no-ledger") and erasures["reapplied"] == 0
    assert "live database studyhub" in erasures["sources"]
    assert any("erasure ledger" in line for line in out["plan"]["summary"])
    # The API's connection objects carry passwords: none reaches the output or the audit log.
    assert "fake-password-xyz" not in json.dumps(out)
    audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
    assert audit["action"] == "cluster.fork" and audit["new_id"] == new_id
    assert do.fake.token not in json.dumps(audit)


def test_fork_shows_progress_and_how_to_connect(cli, do):
    res = run(cli, "fork", "--at", "now", "--name", "staging-now", "--yes", "--poll-interval", "0")
    assert res.exit_code == 0, res.stderr
    assert "fork staging-now is online" in res.stdout
    assert "connect: postgresql://studyhub_app@127.0.0.1:" in res.stdout
    assert "verification · database studyhub" in res.stdout
    assert "fake-password-xyz" not in res.stdout + res.stderr


def test_fork_outside_the_window_is_refused_before_any_change(cli, do):
    at = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()
    res = run(cli, "fork", "--at", at, "--name", "too-old", "--yes")
    assert res.exit_code == 1
    assert "outside the recoverable window" in res.stderr
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ … \d{4}-", res.stderr)
    assert do.fake.sent("POST") == []


def test_forks_list_follows_pagination_and_remove_only_touches_tagged_clusters(cli, do):
    for n in ("fork-a", "fork-b", "fork-c"):
        do.fake.add_cluster(n, tags=["studyhub-fork"])
    other = do.fake.add_cluster("not-a-fork")
    do.fake.max_per_page = 1
    out = _json(run(cli, "forks", "list", "--json"))
    assert [f["name"] for f in out] == ["fork-a", "fork-b", "fork-c"]
    pages = [r.query for r in do.fake.sent("GET")]
    assert [p["page"] for p in pages] == ["1", "2", "3"]
    assert all(p["tag_name"] == "studyhub-fork" for p in pages)
    do.fake.requests.clear()
    res = run(cli, "forks", "remove", "not-a-fork", "--yes")
    assert res.exit_code == 1 and "tagged studyhub-fork" in res.stderr
    assert do.fake.sent("DELETE") == [] and other in do.fake.clusters
    res = run(cli, "forks", "remove", "fork-b", "--yes")
    assert res.exit_code == 0, res.stderr
    [delete] = do.fake.sent("DELETE")
    assert "fork-b" not in [c["name"] for c in do.fake.clusters.values()]
    assert delete.path.startswith(f"{BASE}/") and delete.path != f"{BASE}/{do.cid}"


def test_replica_add_list_remove(cli, do):
    res = run(cli, "replica", "add", "--name", "read-nyc3-01", "--size", "db-s-2vcpu-4gb",
              "--yes", "--poll-interval", "0")
    assert res.exit_code == 0, res.stderr
    [post] = do.fake.sent("POST")
    assert (post.path, post.body) == (f"{BASE}/{do.cid}/replicas",
                                      {"name": "read-nyc3-01", "size": "db-s-2vcpu-4gb",
                                       "region": "nyc3"})
    polls = [r for r in do.fake.sent("GET") if r.path == f"{BASE}/{do.cid}/replicas/read-nyc3-01"]
    assert len(polls) == 2  # forking, then online
    out = _json(run(cli, "replica", "list", "--json"))
    assert [(r["name"], r["status"], r["size"]) for r in out] == \
        [("read-nyc3-01", "online", "db-s-2vcpu-4gb")]
    res = run(cli, "replica", "add", "--name", "read-small", "--size", "db-s-1vcpu-1gb", "--yes")
    assert res.exit_code == 1
    assert "at least the cluster's node size (422)" in res.stderr
    do.fake.requests.clear()
    res = run(cli, "replica", "remove", "nope", "--yes")
    assert res.exit_code == 1 and "no replica named 'nope' (replicas: read-nyc3-01)" in res.stderr
    res = run(cli, "replica", "remove", "read-nyc3-01", "--yes")
    assert res.exit_code == 0, res.stderr
    assert [(r.method, r.path) for r in do.fake.sent("DELETE")] == \
        [("DELETE", f"{BASE}/{do.cid}/replicas/read-nyc3-01")]
    assert do.fake.replicas[do.cid] == {}


def test_resize_shows_the_change_needs_confirmation_and_waits(cli, do):
    res = run(cli, "resize", "--size", "db-s-2vcpu-4gb")
    assert res.exit_code == 1 and "needs confirmation" in res.stderr
    assert "db-s-1vcpu-2gb (1 vCPU, 2 GB RAM) → db-s-2vcpu-4gb (2 vCPU, 4 GB RAM)" in res.stdout
    assert "brief interruption" in res.stdout and "pricing" in res.stdout
    assert do.fake.sent("PUT") == []
    res = run(cli, "resize", "--size", "db-s-2vcpu-4gb", "--yes", "--poll-interval", "0")
    assert res.exit_code == 0, res.stderr
    [put] = do.fake.sent("PUT")
    assert (put.path, put.body) == (f"{BASE}/{do.cid}/resize",
                                    {"size": "db-s-2vcpu-4gb", "num_nodes": 1})
    assert do.fake.clusters[do.cid]["status"] == "online"
    assert "resized db-s-1vcpu-2gb → db-s-2vcpu-4gb" in res.stdout


@pytest.mark.parametrize("size, message", [
    ("db-s-1vcpu-1gb", "cannot resize to smaller nodes"),
    ("db-s-64vcpu-1tb", "is not offered for 1-node PostgreSQL clusters"),
])
def test_resize_refuses_impossible_sizes_without_sending_it(cli, do, size, message):
    res = run(cli, "resize", "--size", size, "--yes")
    assert res.exit_code == 1 and message in res.stderr
    assert do.fake.sent("PUT") == []


def test_pool_add_list_remove(cli, do):
    res = run(cli, "pool", "add", "--name", "backend-pool", "--size", "10", "--yes")
    assert res.exit_code == 0, res.stderr
    [post] = do.fake.sent("POST")
    assert (post.path, post.body) == (f"{BASE}/{do.cid}/pools",
                                      {"name": "backend-pool", "mode": "transaction",
                                       "size": 10, "db": "studyhub"})
    out = _json(run(cli, "pool", "list", "--json"))
    assert [(p["name"], p["port"]) for p in out] == [("backend-pool", do.fake.connection_port + 1)]
    res = run(cli, "pool", "add", "--name", "too-big", "--size", "100", "--yes")
    assert res.exit_code == 1
    assert "refused creating the pool too-big: pool size exceeds" in res.stderr
    res = run(cli, "pool", "remove", "backend-pool", "--yes")
    assert res.exit_code == 0, res.stderr
    assert [(r.method, r.path) for r in do.fake.sent("DELETE")] == \
        [("DELETE", f"{BASE}/{do.cid}/pools/backend-pool")]


@pytest.mark.parametrize("args", [
    ["fork", "--at", "now", "--name", "dry-fork"],
    ["replica", "add", "--name", "dry-replica"],
    ["replica", "remove", "dry-replica"],
    ["resize", "--size", "db-s-2vcpu-4gb"],
    ["pool", "add", "--name", "dry-pool"],
    ["pool", "remove", "dry-pool"],
    ["forks", "remove", "dry-fork"],
])
def test_dry_run_sends_nothing(cli, do, args):
    res = run(cli, *args, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert do.fake.requests == []
    assert "API requests it would send" in res.stdout and "nothing was sent" in res.stdout
    out = _json(run(cli, *args, "--dry-run", "--json"))
    assert out["result"] is None and out["plan"]["offline"] is True
    assert do.fake.requests == []


def test_429_and_5xx_are_retried_a_bounded_number_of_times(cli, do):
    do.fake.fail("GET", r"/backups$", 429, times=2, retry_after="1")
    out = _json(run(cli, "backups", "--json"))
    assert len(out["backups"]) == 7
    assert [r.status for r in do.fake.requests] == [429, 429, 200]

    do.fake.requests.clear()
    do.fake.fail("GET", r"/pools$", 503, times=100)
    res = run(cli, "pool", "list")
    assert res.exit_code == 1
    attempts = digitalocean_api.RETRY_TOTAL + 1
    assert f"answered 503 to listing connection pools after {attempts} attempt(s)" in res.stderr
    assert len(do.fake.requests) == attempts
    do.fake.faults.clear()

    do.fake.requests.clear()
    do.fake.fail("GET", r"/replicas$", 429, times=100, retry_after="3600")
    res = run(cli, "replica", "list")
    assert res.exit_code == 1 and "asks to wait 3600 s" in res.stderr
    assert len(do.fake.requests) == 1  # never sleeps an hour
    do.fake.faults.clear()


def test_a_post_that_got_a_5xx_is_not_repeated(cli, do):
    do.fake.fail("POST", r"/pools$", 503, times=1)
    res = run(cli, "pool", "add", "--name", "maybe-pool", "--yes")
    assert res.exit_code == 1 and "may or may not have been done" in res.stderr
    assert len(do.fake.sent("POST")) == 1
    do.fake.fail("POST", r"/pools$", 429, times=1, retry_after="1")
    res = run(cli, "pool", "add", "--name", "later-pool", "--yes")
    assert res.exit_code == 0, res.stderr  # a 429 means not done: retried
    assert [r.status for r in do.fake.sent("POST")][-2:] == [429, 201]


def test_bad_token_is_one_clear_line(cli, do, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_wrong-token-value")
    res = run(cli, "info")
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert "DigitalOcean refused the API token (401" in res.stderr
    assert "wrong-token-value" not in res.stdout + res.stderr
    assert len(do.fake.requests) == 1  # a 401 is not retried


def test_token_from_the_0600_secrets_file(cli, do, monkeypatch, tmp_path):
    monkeypatch.delenv("DIGITALOCEAN_TOKEN")
    res = run(cli, "replica", "list")
    assert res.exit_code == 1 and "no DigitalOcean API token" in res.stderr
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[staging]\ndo_token = "{do.fake.token}"\n')
    secrets.chmod(0o644)
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(secrets))
    res = run(cli, "replica", "list")
    assert res.exit_code == 1 and "readable by others" in res.stderr
    secrets.chmod(0o600)
    res = run(cli, "replica", "list")
    assert res.exit_code == 0, res.stderr
    assert "no replicas" in res.stdout


def test_tls_is_verified_not_disabled(cli, do, monkeypatch):
    monkeypatch.delenv("STUDYHUB_DO_CA_BUNDLE")
    res = run(cli, "info")
    assert res.exit_code == 1 and "TLS certificate not trusted" in res.stderr
    assert do.fake.requests == []  # the request never reached the server's handler
    monkeypatch.setenv("STUDYHUB_DO_API_URL", do.server.url.replace("https", "http"))
    res = run(cli, "info")
    assert res.exit_code == 1 and "must be an https:// URL" in res.stderr


def test_unknown_cluster_and_missing_id_are_one_line(cli, do, monkeypatch):
    monkeypatch.setenv("STUDYHUB_STAGING_DO_CLUSTER_ID", "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
    res = run(cli, "info")
    assert res.exit_code == 1 and "DigitalOcean has no cluster 9cc10173" in res.stderr
    monkeypatch.setenv("STUDYHUB_STAGING_DO_CLUSTER_ID", "not-a-uuid")
    res = run(cli, "info")
    assert res.exit_code == 1 and "is not a DigitalOcean cluster id" in res.stderr
    monkeypatch.delenv("STUDYHUB_STAGING_DO_CLUSTER_ID")
    res = run(cli, "info")
    assert res.exit_code == 1 and "STUDYHUB_STAGING_DO_CLUSTER_ID" in res.stderr


def test_info_and_backups(cli, do):
    run(cli, "pool", "add", "--name", "backend-pool", "--yes")
    out = _json(run(cli, "info", "--json"))
    assert (out["provider"], out["name"], out["size"], out["num_nodes"]) == \
        ("digitalocean", "studyhub-staging", "db-s-1vcpu-2gb", 1)
    assert out["maintenance_window"] == "tuesday 08:00:00 UTC"
    assert [n["role"] for n in out["nodes"]] == ["primary", "pooler"]
    assert out["backups_count"] == 7 and out["pools"][0]["name"] == "backend-pool"
    backups = _json(run(cli, "backups", "--json"))
    assert backups["schedule"] == "daily at 20:40 UTC, every 24 h"
    earliest = datetime.fromisoformat(backups["window"]["earliest"])
    assert datetime.now(timezone.utc) - earliest <= timedelta(days=7, minutes=1)


def test_basebackup_is_local_only(cli, do):
    res = run(cli, "basebackup")
    assert res.exit_code == 1 and "takes its own daily backups" in res.stderr


def test_no_secret_on_any_output(cli, do):
    """The token and the database passwords never appear in what the commands print."""
    outputs = [run(cli, "info"), run(cli, "info", "--json"), run(cli, "backups"),
               run(cli, "fork", "--at", "now", "--name", "secret-check", "--dry-run")]
    text = "".join(r.stdout + r.stderr for r in outputs)
    assert all(r.exit_code == 0 for r in outputs), text
    for secret in (do.fake.token, *do.passwords.values(), "fake-password-xyz"):
        assert secret not in text
    assert os.environ["DIGITALOCEAN_TOKEN"] == do.fake.token


def test_production_must_be_named_explicitly(cli, do, monkeypatch):
    for key in ("HOST", "PORT", "DATABASE", "DO_CLUSTER_ID", "PASSWORD", "OPS_PASSWORD"):
        monkeypatch.setenv(f"STUDYHUB_PRODUCTION_{key}", os.environ[f"STUDYHUB_STAGING_{key}"])
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    res = cli("cluster", "resize", "--size", "db-s-2vcpu-4gb", "--yes")
    assert res.exit_code == 1 and "name it explicitly with --profile production" in res.stderr
    assert do.fake.sent("PUT") == []
    res = cli("cluster", "resize", "--size", "db-s-2vcpu-4gb", "--yes", "--profile", "production",
              "--poll-interval", "0")
    assert res.exit_code == 0, res.stderr
    assert len(do.fake.sent("PUT")) == 1


def test_a_fork_that_times_out_after_creation_is_still_audited(cli, do, cluster):
    do.fake.polls_until_online = 50
    res = run(cli, "fork", "--at", "now", "--name", "staging-slow", "--yes",
              "--poll-interval", "0", "--timeout", "0")
    assert res.exit_code != 0 and "still 'creating'" in res.stderr
    assert ("POST", BASE) in calls(do.fake)  # the cluster exists (and is billed)
    audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
    assert audit["action"] == "cluster.fork" and audit["outcome"] == "failed"
    assert "still 'creating'" in audit["error"] and do.fake.token not in json.dumps(audit)


def test_a_fork_that_cannot_be_reached_for_the_erasure_ledger_fails_loudly(cli, do, cluster):
    """The fork is online but its database cannot be reached: it may hold erased people, so the
    command fails with what to do (remove it or re-apply), and the audit line says so."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        do.fake.connection_port = s.getsockname()[1]  # nothing listens there
    res = run(cli, "fork", "--at", "now", "--name", "staging-unreachable", "--yes",
              "--poll-interval", "0")
    assert res.exit_code == 1
    assert "cannot re-apply the erasure ledger" in res.stderr
    assert "studyhub cluster forks remove staging-unreachable" in res.stderr
    assert "fake-password-xyz" not in res.stderr
    audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
    assert audit["action"] == "cluster.fork" and audit["outcome"] == "failed"
    assert "erasure ledger" in audit["error"]
    res = run(cli, "fork", "--at", "now", "--name", "staging-skip", "--yes",
              "--poll-interval", "0", "--no-reapply-erasures")
    assert res.exit_code == 0, res.stderr
    assert "erasure ledger NOT re-applied" in res.stderr


@pytest.mark.parametrize("args,refusal", [
    (["fork", "--at", "now", "--name", "staging-restore\n", "--poll-interval", "0.01"],
     "invalid fork name"),
    (["replica", "add", "--name", "staging-replica\n", "--poll-interval", "0.01"],
     "invalid replica name"),
    (["pool", "add", "--name", "backend-pool\n"], "invalid pool name"),
], ids=["fork", "replica", "pool"])
def test_a_name_with_a_trailing_newline_is_refused_before_any_change(cli, do, args, refusal):
    """Names are checked whole (re.fullmatch): "$" would let a trailing newline through."""
    res = run(cli, *args, "--yes")
    assert res.exit_code == 1, res.stdout
    assert refusal in res.stderr
    assert do.fake.sent("POST") == []
