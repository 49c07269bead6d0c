"""The agent's Prometheus endpoint: gauges from a real doctor report of the local cluster,
job metrics, series that go away, loopback by default, a bearer token when configured (401
without it) and required when exposed."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from studyhub.agent.config import AgentConfig
from studyhub.agent.events import JobOutcome
from studyhub.agent.hooks import MetricsHook, build_hooks
from studyhub.agent.metrics import AgentMetrics, MetricsSettings
from studyhub.connect import connect
from studyhub.errors import ConfigError
from studyhub.ops.alerts import check_number
from studyhub.ops.health import EXIT_CODES, Check, DoctorReport, run_doctor

T0 = datetime(2026, 12, 2, 9, 41, tzinfo=timezone.utc)
TOKEN = "metrics-token-0123456789abcdef"


def scrape(port: int, token: str | None = None) -> dict[tuple[str, tuple], float]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return parse(resp.read().decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def status_of(port: int, token: str | None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def outcome(job: str, kind: str, result: object = None, status: str = "ok",
            duration_s: float = 0.5) -> JobOutcome:
    return JobOutcome("test-agent", "local", job, kind, status, T0, duration_s, result, None)


def token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "metrics-token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


def test_gauges_after_a_real_doctor_report(profile):
    with connect(profile, "ops", autocommit=True) as conn:
        report = run_doctor(conn, profile)
    hook = MetricsHook(MetricsSettings(enabled=True, port=0), "test-agent")
    try:
        assert hook.server is not None and hook.server.host == "127.0.0.1"
        hook.job_finished(outcome("doctor", "doctor", report, duration_s=1.25))
        m = scrape(hook.server.port)
    finally:
        hook.close()
    assert len(report.checks) >= 10
    for c in report.checks:
        labels = (("check", c.name), ("profile", "local"))
        assert m[("studyhub_check_status", labels)] == EXIT_CODES[c.status], c.name
        number = check_number(c.value)
        assert m.get(("studyhub_check_value", labels)) == number, c.name
    conns = next(c for c in report.checks if c.name == "connections")
    assert m[("studyhub_check_value", (("check", "connections"), ("profile", "local")))] \
        == int(conns.value.split("/")[0]) >= 1
    assert m[("studyhub_doctor_status", (("profile", "local"),))] == EXIT_CODES[report.status]
    # sessions by state: from the doctor's connection count until sampling reports them
    by_state = {dict(k[1])["state"]: v for k, v in m.items() if k[0] == "studyhub_sessions"}
    assert by_state == {i["state"]: i["count"] for i in conns.items}
    job = (("job", "doctor"), ("profile", "local"))
    assert m[("studyhub_agent_jobs_total", (("job", "doctor"), ("outcome", "ok"),
                                            ("profile", "local")))] == 1
    assert m[("studyhub_agent_job_duration_seconds_count", job)] == 1
    assert m[("studyhub_agent_job_duration_seconds_sum", job)] == 1.25
    assert m[("studyhub_agent_job_last_duration_seconds", job)] == 1.25
    assert m[("studyhub_agent_up", (("agent", "test-agent"),))] == 1


@dataclass
class Sample:  # the fields of history.SampleResult the metrics read (helper B's type)
    taken_at: datetime
    sessions: int
    by_state: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    longest_transaction_s: float | None = None
    blocked_chains: int = 0


def _report(*checks: Check) -> DoctorReport:
    return DoctorReport("local", "studyhub", "warn", 1, list(checks))


def test_samples_replication_backups_and_drills_and_stale_series_removed():
    clock = [T0.timestamp()]
    metrics = AgentMetrics("a1", clock=lambda: clock[0])
    metrics.record(outcome("sample", "sample", Sample(T0, 7, {"active": 2, "idle": 5}, 1, 42.5)))
    backup_at = (T0 - timedelta(hours=3)).isoformat()
    drill_at = (T0 - timedelta(days=2)).isoformat()
    metrics.record(outcome("doctor", "doctor", _report(
        Check("connections", "c", "ok", "7/97 (7%)", "-", items=[{"state": "idle", "count": 9}]),
        Check("replication_lag", "r", "warn", "1 MB, 3.0s (1 replica(s))", "-",
              items=[{"name": "replica1", "replay_lag_bytes": 1048576, "replay_lag_s": 3.0}]),
        Check("backup_age", "b", "warn", "3.0h", "-", items=[
            {"target": "file:///backups", "created_at": backup_at, "age_s": 10800.0},
            {"target": "s3://bucket/p", "created_at": None, "age_s": None}]),
        Check("restore_drill", "d", "ok", "2.0d ago", "-", items=[
            {"which": "last", "drilled_at": drill_at, "ok": True}]))))
    clock[0] += 600  # ages grow between scrapes without a new report
    m = parse(metrics.exposition().decode())
    assert {dict(k[1])["state"]: v for k, v in m.items() if k[0] == "studyhub_sessions"} \
        == {"active": 2, "idle": 5}  # sampling wins over the doctor's count
    assert m[("studyhub_sessions_waiting", (("profile", "local"),))] == 1
    assert m[("studyhub_longest_transaction_seconds", (("profile", "local"),))] == 42.5
    replica = (("profile", "local"), ("replica", "replica1"))
    assert m[("studyhub_replication_lag_seconds", replica)] == 3.0
    assert m[("studyhub_replication_lag_bytes", replica)] == 1048576
    assert m[("studyhub_backup_age_seconds", (("profile", "local"),
                                              ("target", "file:///backups")))] == 10800 + 600
    assert m[("studyhub_backup_age_seconds", (("profile", "local"),
                                              ("target", "s3://bucket/p")))] == float("inf")
    assert m[("studyhub_restore_drill_age_seconds", (("profile", "local"),))] == 2 * 86400 + 600
    assert m[("studyhub_check_value", (("check", "connections"), ("profile", "local")))] == 7
    assert ("studyhub_check_value", (("check", "backup_age"), ("profile", "local"))) not in m

    # the replica is gone and a check no longer runs: their series go, the rest stay
    metrics.record(outcome("doctor", "doctor", _report(
        Check("replication_lag", "r", "ok", "no replicas", "-"))))
    m = parse(metrics.exposition().decode())
    assert not [k for k in m if k[0] == "studyhub_replication_lag_seconds"]
    assert [dict(k[1])["check"] for k in m if k[0] == "studyhub_check_status"] \
        == ["replication_lag"]
    metrics.record(outcome("backup", "backup", status="failed", duration_s=3))
    m = parse(metrics.exposition().decode())
    assert m[("studyhub_agent_jobs_total", (("job", "backup"), ("outcome", "failed"),
                                            ("profile", "local")))] == 1
    assert ("studyhub_agent_job_last_success_timestamp_seconds",
            (("job", "backup"), ("profile", "local"))) not in m


def test_a_configured_token_is_required(tmp_path):
    settings = MetricsSettings(enabled=True, port=0, token_file=str(token_file(tmp_path)))
    hook = MetricsHook(settings, "a1")
    try:
        port = hook.server.port
        assert status_of(port, None) == 401
        assert status_of(port, "wrong-token-0123456789abcdef") == 401
        assert status_of(port, TOKEN + "x") == 401
        assert status_of(port, TOKEN) == 200
        assert ("studyhub_agent_up", (("agent", "a1"),)) in scrape(port, TOKEN)
    finally:
        hook.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port, TOKEN)  # stopped


def test_loopback_by_default_and_a_token_when_exposed(tmp_path):
    assert MetricsSettings().host == "127.0.0.1" and MetricsSettings().enabled is False
    with pytest.raises(ValidationError, match="without a token"):
        MetricsSettings(host="0.0.0.0")
    with pytest.raises(ValidationError, match="token: secrets never go"):
        MetricsSettings.model_validate({"token": TOKEN})
    exposed = MetricsSettings(host="0.0.0.0", token_file=str(token_file(tmp_path, 0o644)))
    with pytest.raises(ConfigError, match="readable by others") as exc:
        MetricsHook(exposed.model_copy(update={"port": 0}), "a1")
    assert TOKEN not in str(exc.value)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter than 16"):
        MetricsSettings(token_file=str(short)).token()


def test_build_hooks_serves_when_enabled_and_close_stops(tmp_path):
    config = AgentConfig(name="a1", metrics=MetricsSettings(enabled=True, port=0))
    [hook] = build_hooks(config, tmp_path)
    assert isinstance(hook, MetricsHook)
    port = hook.server.port
    assert scrape(port)[("studyhub_agent_up", (("agent", "a1"),))] == 1
    hook.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
