"""`studyhub serve` configuration: where the token secret comes from, refusing a pooler or
replica the profile lacks, and no password or secret in URLs or on any process's argv."""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest
from pydantic import SecretStr

from studyhub.api.db import asyncpg_connect_args, make_engine
from studyhub.errors import ConfigError
from studyhub.profiles import Profile
from studyhub.serving import ApiSettings, choose_topology, load_token_secret, local_secret_path
from tests.test_secrets import CmdlineWatcher, _passwords


def remote_profile(**kw) -> Profile:
    base = dict(name="staging", kind="remote", host="db.example.com", port=25060,
                database="studyhub_staging", sslmode="require",
                users={"app": "studyhub_app", "ops": "studyhub_ops", "admin": "doadmin"},
                passwords={"app": SecretStr("hunter2-very-secret")})
    base.update(kw)
    return Profile(**base)


def test_local_token_secret_is_created_private_and_reused(profile, monkeypatch):
    monkeypatch.delenv("STUDYHUB_API_SECRET", raising=False)
    monkeypatch.delenv("STUDYHUB_API_SECRET_FILE", raising=False)
    first = load_token_secret(profile)
    path = local_secret_path(profile)
    assert path.parent == profile.passfile.parent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32 and load_token_secret(profile) == first


def test_token_secret_file_must_be_private_and_long(profile, tmp_path, monkeypatch):
    secret_file = tmp_path / "api.key"
    secret_file.write_text("s" * 40)
    secret_file.chmod(0o644)
    monkeypatch.setenv("STUDYHUB_API_SECRET_FILE", str(secret_file))
    with pytest.raises(ConfigError, match="readable by others .*chmod 600"):
        load_token_secret(profile)
    secret_file.chmod(0o600)
    assert load_token_secret(profile) == "s" * 40
    monkeypatch.setenv("STUDYHUB_API_SECRET", "too-short")
    with pytest.raises(ConfigError, match="shorter than 32 characters"):
        load_token_secret(profile)


def test_remote_profile_needs_an_explicit_token_secret(monkeypatch):
    monkeypatch.delenv("STUDYHUB_API_SECRET", raising=False)
    monkeypatch.delenv("STUDYHUB_API_SECRET_FILE", raising=False)
    with pytest.raises(ConfigError, match="no API token secret for profile staging"):
        load_token_secret(remote_profile())


def test_a_missing_pooler_or_replica_is_refused_in_one_line(profile):
    bare = dataclasses.replace(profile, pooler_port=None, replica_port=None, replica_host=None)
    auto = choose_topology(bare, ApiSettings())
    assert (auto.writer, auto.replica) == ("direct", False)
    with pytest.raises(ConfigError, match="has no connection pooler .*local up --pooler"):
        choose_topology(bare, ApiSettings(use_pooler=True))
    with pytest.raises(ConfigError, match="has no read replica .*local up --replica"):
        choose_topology(bare, ApiSettings(use_replica=True))


def test_serve_with_an_unusable_profile_is_one_error_line(cli):
    result = cli("serve", "--profile", "staging")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: profile staging has no host")
    assert len(result.stderr.strip().splitlines()) == 1


def test_engines_never_put_a_password_in_the_url():
    prof = remote_profile(pooler_port=25061, pooler_database="studyhub-pool",
                          replica_host="replica.example.com", replica_port=25060)
    for role in ("app", "pooler", "replica"):
        engine = make_engine(prof, role, ApiSettings(), application_name="t")
        assert engine.url.password is None
        assert "hunter2" not in str(engine.url) and "hunter2" not in repr(engine)
        assert engine.url.render_as_string(hide_password=False).count("hunter2") == 0
    pooled = asyncpg_connect_args(prof, prof.endpoint("pooler"), ApiSettings(), "t")
    assert pooled["statement_cache_size"] == 0 and pooled["prepared_statement_cache_size"] == 0
    assert pooled["ssl"] == "require"
    direct = asyncpg_connect_args(prof, prof.endpoint("app"), ApiSettings(), "t")
    assert "statement_cache_size" not in direct and "prepared_statement_cache_size" not in direct


@pytest.mark.slow
def test_serve_runs_with_no_secret_on_any_argv(cluster, migrated, cluster_home):
    secret = "api-secret-" + "x" * 40
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(STUDYHUB_HOME=str(cluster_home), STUDYHUB_API_SECRET=secret)
    with CmdlineWatcher(_passwords(cluster) + [secret], "serve") as watch:
        proc = subprocess.Popen([sys.executable, "-m", "studyhub.cli.main", "serve", "--port",
                                 str(port)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
        finally:
            proc.terminate()
            output = proc.communicate(timeout=30)[0]
    assert status == 200, output
    assert "StudyHub API on http://127.0.0.1" in output
    assert watch.seen_target > 0 and watch.leaks == []
    assert secret not in output


def test_pool_sizes_per_worker_apply_to_the_engines():
    prof = remote_profile(pooler_port=25061, pooler_database="studyhub-pool",
                          replica_host="replica.example.com", replica_port=25060)
    defaults = ApiSettings()
    assert make_engine(prof, "app", defaults, application_name="t").pool.size() == 20
    assert make_engine(prof, "pooler", defaults, application_name="t").pool.size() == 40
    assert make_engine(prof, "replica", defaults, application_name="t").pool.size() == 20
    sized = ApiSettings(pool_size=7)  # --pool-size 7: the writer's and the reader's pools
    for role in ("app", "pooler", "replica"):
        assert make_engine(prof, role, sized, application_name="t").pool.size() == 7
    own = ApiSettings(pool_size=7, replica_pool_size=3)
    assert make_engine(prof, "replica", own, application_name="t").pool.size() == 3
    assert make_engine(prof, "pooler", own, application_name="t").pool.size() == 7
