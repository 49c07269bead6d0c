"""Profiles: loading from environment and studyhub.toml, secrets handling, sslmode refusal."""

from __future__ import annotations

import json
import os

import pytest

from studyhub.errors import ConfigError
from studyhub.profiles import read_secrets_file, resolve_profile


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("STUDYHUB_") and v != "STUDYHUB_HOME"]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("STUDYHUB_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))
    return monkeypatch


def test_local_is_the_default(clean_env, cluster):
    prof = resolve_profile()
    assert prof.name == "local" and prof.is_local and not prof.explicit
    assert prof.port == cluster.load_state().primary_port
    assert resolve_profile("local").explicit


def test_staging_from_environment_matches_runbook_defaults(clean_env):
    clean_env.setenv("STUDYHUB_STAGING_HOST", "db-studyhub-staging.example.db.ondigitalocean.com")
    clean_env.setenv("STUDYHUB_STAGING_PASSWORD", "s3cret-staging")
    prof = resolve_profile("staging")
    assert (prof.host, prof.port, prof.database, prof.users["app"], prof.sslmode) == (
        "db-studyhub-staging.example.db.ondigitalocean.com", 25060, "studyhub_staging",
        "studyhub_app", "require")
    assert prof.password_for("studyhub_app").get_secret_value() == "s3cret-staging"
    assert "s3cret-staging" not in repr(prof)
    assert prof.password_sources["app"] == "env STUDYHUB_STAGING_PASSWORD"


def test_production_from_toml_is_protected(clean_env, tmp_path):
    cfg = tmp_path / "studyhub.toml"
    cfg.write_text('[production]\nhost = "db-studyhub-prod.example.com"\nops_user = "oncall"\n')
    clean_env.setenv("STUDYHUB_CONFIG", str(cfg))
    prof = resolve_profile("production")
    assert prof.database == "studyhub_prod" and prof.users["ops"] == "oncall"
    assert prof.protected and prof.explicit
    clean_env.setenv("STUDYHUB_PROFILE", "production")
    assert not resolve_profile().explicit  # chosen by environment, not named on the command line


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_weak_sslmode_is_refused(clean_env, mode):
    clean_env.setenv("STUDYHUB_STAGING_HOST", "db.example.com")
    clean_env.setenv("STUDYHUB_STAGING_SSLMODE", mode)
    with pytest.raises(ConfigError, match=f"sslmode '{mode}' is weaker than 'require'"):
        resolve_profile("staging")


def test_missing_host_and_unknown_profile(clean_env):
    with pytest.raises(ConfigError, match="has no host; set STUDYHUB_STAGING_HOST"):
        resolve_profile("staging")
    with pytest.raises(ConfigError, match="unknown profile 'qa'"):
        resolve_profile("qa")


def test_secrets_file_must_be_private(clean_env, tmp_path):
    path = tmp_path / "secrets.toml"
    path.write_text('[staging]\npassword = "from-file"\n')
    os.chmod(path, 0o644)
    clean_env.setenv("STUDYHUB_SECRETS_FILE", str(path))
    clean_env.setenv("STUDYHUB_STAGING_HOST", "db.example.com")
    with pytest.raises(ConfigError, match="readable by others .* chmod 600"):
        resolve_profile("staging")
    os.chmod(path, 0o600)
    prof = resolve_profile("staging")
    assert prof.password_for("studyhub_app").get_secret_value() == "from-file"
    assert read_secrets_file(path) == {"staging": {"password": "from-file"}}


def test_profiles_command_redacts_secrets(clean_env, cli, cluster):
    clean_env.setenv("STUDYHUB_STAGING_HOST", "db.example.com")
    clean_env.setenv("STUDYHUB_STAGING_PASSWORD", "very-secret-value")
    res = cli("profiles", "--json")
    assert res.exit_code == 0
    assert "very-secret-value" not in res.stdout
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["staging"]["passwords"]["app"] == "env STUDYHUB_STAGING_PASSWORD"
    assert rows["production"]["error"].startswith("profile production has no host")
    assert rows["local"]["default"] is True
    table = cli("profiles")
    assert table.exit_code == 0 and "very-secret-value" not in table.stdout


def test_remote_profile_over_ssl_against_the_local_cluster(clean_env, cli, migrated, cluster):
    """A non-local profile really uses TLS: point 'staging' at the local cluster with
    sslmode=verify-ca and the password from the environment."""
    password = _password(cluster, "studyhub_ops")
    clean_env.setenv("STUDYHUB_STAGING_HOST", "127.0.0.1")
    clean_env.setenv("STUDYHUB_STAGING_PORT", str(migrated.port))
    clean_env.setenv("STUDYHUB_STAGING_DATABASE", "studyhub")
    clean_env.setenv("STUDYHUB_STAGING_SSLMODE", "verify-ca")
    clean_env.setenv("STUDYHUB_STAGING_SSLROOTCERT", str(cluster.secrets_dir / "server.crt"))
    clean_env.setenv("STUDYHUB_STAGING_OPS_PASSWORD", password)
    from studyhub.connect import connect

    prof = resolve_profile("staging")
    with connect(prof, "ops") as conn:
        ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl == (True,)
    res = cli("diag", "sizes", "--profile", "staging", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["database"] == "studyhub"


def test_wrong_password_is_one_line_without_the_password(clean_env, cli, migrated):
    clean_env.setenv("STUDYHUB_STAGING_HOST", "127.0.0.1")
    clean_env.setenv("STUDYHUB_STAGING_PORT", str(migrated.port))
    clean_env.setenv("STUDYHUB_STAGING_DATABASE", "studyhub")
    clean_env.setenv("STUDYHUB_STAGING_OPS_PASSWORD", "wrong-password-123")
    res = cli("diag", "sizes", "--profile", "staging")
    assert res.exit_code == 1
    assert "password authentication failed for user \"studyhub_ops\"" in res.stderr
    assert "wrong-password-123" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1


def _password(cluster, role: str) -> str:
    for line in cluster.passfile.read_text().splitlines():
        parts = line.split(":")
        if parts[3] == role:
            return parts[4]
    raise KeyError(role)


def test_invalid_setting_error_does_not_echo_secrets(clean_env):
    clean_env.setenv("STUDYHUB_STAGING_HOST", "db.example.com")
    clean_env.setenv("STUDYHUB_STAGING_PORT", "not-a-port")
    clean_env.setenv("STUDYHUB_STAGING_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as info:
        resolve_profile("staging")
    assert "staging.port" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


def test_cli_error_keeps_brackets(clean_env, cli):
    clean_env.setenv("STUDYHUB_PROFILE", "staging")
    res = cli("migrate", "current")
    assert res.exit_code == 1
    assert '[staging] host = "..."' in res.stderr
