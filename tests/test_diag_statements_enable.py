"""``diag statements enable``: CREATE EXTENSION where it is missing, ALTER SYSTEM + the restart on
a self-managed server whose shared_preload_libraries lacks the library, DigitalOcean's managed
preload, already enabled, no privilege. Each test works on its own fresh database (the session
cluster keeps pg_stat_statements loaded throughout), the preload one on a cluster of its own."""

from __future__ import annotations

import shutil
import uuid

import pytest

from studyhub.local import LocalCluster
from tests.conftest import connect_as, make_home
from tests.diag_helpers import as_json, audit_lines, local_passwords, remote_profile_env


def _installed(cluster, database: str) -> bool:
    with cluster.admin_connect(database) as c:
        return c.execute("SELECT count(*) FROM pg_extension WHERE extname = "
                         "'pg_stat_statements'").fetchone()[0] == 1


@pytest.fixture
def bare_db(cluster, fresh_db):
    """A fresh database with pg_stat_statements dropped (the server still preloads it)."""
    with cluster.admin_connect(fresh_db) as c:
        c.execute("DROP EXTENSION pg_stat_statements")
    assert not _installed(cluster, fresh_db)
    return fresh_db


def test_enable_creates_the_extension_then_says_it_is_enabled(cluster, profile, bare_db, cli):
    res = cli("diag", "statements", "enable", "-d", bare_db, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert f"in database {bare_db}: CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
        in res.stdout
    assert "ALTER SYSTEM" not in res.stdout  # the local server preloads it already
    assert "dry run: nothing was changed" in res.stdout
    res = cli("diag", "statements", "enable", "-d", bare_db)
    assert res.exit_code == 1 and "needs confirmation" in res.stderr
    assert not _installed(cluster, bare_db)

    out = as_json(cli("diag", "statements", "enable", "-d", bare_db, "--yes", "--json"))
    assert out["plan"]["create_extension"] is True
    assert out["plan"]["new_preload_libraries"] is None and out["plan"]["restart"] is None
    assert out["result"]["enabled"] is True and out["result"]["restarted"] is False
    assert _installed(cluster, bare_db)
    # the ops role reads it, and may reset it (diag slow-queries --reset)
    with connect_as(profile, "ops", bare_db) as c:
        c.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        assert c.execute("SELECT has_function_privilege('studyhub_ops', "
                         "'pg_stat_statements_reset(oid, oid, bigint)', 'EXECUTE')").fetchone()[0]
    [line] = [a for a in audit_lines("diag.statements.enable") if a["database"] == bare_db]
    assert line["outcome"] == "ok" and line["created_extension"] is True
    assert line["provider"] == "local" and line["restarted"] is False

    res = cli("diag", "statements", "enable", "-d", bare_db, "--yes")
    assert res.exit_code == 0, res.stderr
    assert "already enabled" in res.stdout
    assert len([a for a in audit_lines("diag.statements.enable")
                if a["database"] == bare_db]) == 1  # nothing done, nothing audited


def test_slow_queries_hint_names_the_command(bare_db, cli):
    res = cli("diag", "slow-queries", "-d", bare_db)
    assert res.exit_code == 1
    assert f"studyhub diag statements enable -d {bare_db}" in res.stderr


def test_without_the_privilege_one_line_and_nothing_changed(cluster, bare_db, cli, monkeypatch,
                                                            tmp_path):
    remote_profile_env(monkeypatch, cluster, "staging", database=bare_db, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_STAGING_ADMIN_USER", "studyhub_app")  # not a superuser
    monkeypatch.setenv("STUDYHUB_STAGING_ADMIN_PASSWORD", local_passwords(cluster)["studyhub_app"])
    res = cli("diag", "statements", "enable", "--profile", "staging", "--yes")
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert "role studyhub_app may not CREATE EXTENSION pg_stat_statements" in res.stderr
    assert not _installed(cluster, bare_db)


def test_digitalocean_only_creates_the_extension(cluster, bare_db, cli, monkeypatch, tmp_path):
    remote_profile_env(monkeypatch, cluster, "staging", database=bare_db, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_STAGING_DO_CLUSTER_ID", str(uuid.uuid4()))
    monkeypatch.setenv("STUDYHUB_STAGING_ADMIN_USER", "postgres")  # doadmin's stand-in
    monkeypatch.setenv("STUDYHUB_STAGING_ADMIN_PASSWORD", local_passwords(cluster)["postgres"])
    res = cli("diag", "statements", "enable", "--profile", "staging", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "DigitalOcean preloads pg_stat_statements" in res.stdout
    assert "ALTER SYSTEM" not in res.stdout and "restart" not in res.stdout
    out = as_json(cli("diag", "statements", "enable", "--profile", "staging", "--yes", "--json"))
    assert out["plan"]["provider"] == "digitalocean"
    assert out["result"]["created_extension"] is True and out["result"]["enabled"] is True
    assert _installed(cluster, bare_db)


def test_production_is_refused_unless_named(cluster, bare_db, cli, monkeypatch, tmp_path):
    remote_profile_env(monkeypatch, cluster, "production", database=bare_db, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_ADMIN_USER", "postgres")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_ADMIN_PASSWORD", local_passwords(cluster)["postgres"])
    res = cli("diag", "statements", "enable", "--yes")
    assert res.exit_code == 1 and "--profile production" in res.stderr
    assert not _installed(cluster, bare_db)


@pytest.mark.slow
def test_self_managed_without_the_preload_alters_system_and_restarts(cli, monkeypatch):
    """A local cluster of its own whose shared_preload_libraries lacks the library: the plan
    states ALTER SYSTEM and the restart; once confirmed the primary is restarted with it."""
    home = make_home("studyhub-pgss-")
    own = LocalCluster(home)
    try:
        state = own.load_state()
        state.extra["conf_lines"] = ["shared_preload_libraries = ''"]
        own.save_state(state)
        own.up()
        monkeypatch.setenv("STUDYHUB_HOME", str(home))
        with own.admin_connect() as c:
            assert c.execute("SHOW shared_preload_libraries").fetchone()[0] == ""
        pid_before = own.status().primary.pid
        res = cli("diag", "statements", "enable", "--dry-run")
        assert res.exit_code == 0, res.stderr
        assert "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" in res.stdout
        assert "restart the local primary" in res.stdout
        assert own.status().primary.pid == pid_before
        res = cli("diag", "statements", "enable")
        assert res.exit_code == 1 and "needs confirmation" in res.stderr
        out = as_json(cli("diag", "statements", "enable", "--yes", "--json"))
        assert out["result"]["preload_changed"] is True and out["result"]["restarted"] is True
        assert out["result"]["enabled"] is True
        assert own.status().primary.pid != pid_before
        with own.admin_connect("studyhub") as c:
            assert c.execute("SHOW shared_preload_libraries").fetchone()[0] == \
                "pg_stat_statements"
            c.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        res = cli("diag", "statements", "enable", "--yes")
        assert res.exit_code == 0 and "already enabled" in res.stdout
    finally:
        own.destroy()
        shutil.rmtree(home, ignore_errors=True)
