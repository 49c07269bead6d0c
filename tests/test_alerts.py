"""Alerts: the engine's rules (dedupe, repeat, resolved, flap damping, state across restarts)
driven with explicit times, delivered to a real HTTP receiver and a real SMTP server (STARTTLS,
AUTH) on loopback; secrets (the SMTP password, the webhook URL's token) never in logs or
errors; the agent's alert hook fed with real doctor reports from the local cluster."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from studyhub.agent.config import AgentConfig
from studyhub.agent.events import JobOutcome
from studyhub.agent.hooks import ALERT_STATE_FILE, AlertHook, build_hooks
from studyhub.connect import connect
from studyhub.errors import ConfigError
from studyhub.ops.alerts import (
    SMTP_PASSWORD_ENV,
    AlertEngine,
    AlertSettings,
    Signal,
    deliver,
    parse_alert_settings,
    signal_from_job,
    slack_body,
)
from studyhub.ops.health import DEFAULT_THRESHOLDS, run_doctor
from tests.alert_servers import SmtpServer, WebhookReceiver, free_port, start_smtp

T0 = datetime(2026, 12, 2, 9, 41, tzinfo=timezone.utc)
HOOK_TOKEN = "XoxbT0k3nS3cr3tP4th"  # the secret part of a Slack hook's URL
SMTP_PASSWORD = "smtp-Pa55-w0rd-never-shown"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def crit(key: str = "local:connections", status: str = "critical") -> Signal:
    return Signal(key, status, "local: Connections vs max_connections", "too many", "97/97 (100%)")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    s = start_smtp(tmp_path, "studyhub", SMTP_PASSWORD)
    yield s
    s.stop()


@pytest.fixture
def channels(receiver: WebhookReceiver, smtp: SmtpServer, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch):
    """Settings with one webhook (URL in env, token in its path) and e-mail over STARTTLS
    with AUTH (password in a 0600 file); returns a function making AlertSettings."""
    monkeypatch.setenv("STUDYHUB_TEST_HOOK_URL", receiver.url(f"/services/T0/B0/{HOOK_TOKEN}"))
    pw = tmp_path / "smtp-password"
    pw.write_text(SMTP_PASSWORD + "\n")
    pw.chmod(0o600)

    def make(**kw) -> AlertSettings:
        return parse_alert_settings({
            "webhook": [{"url_env": "STUDYHUB_TEST_HOOK_URL", "backoff_s": 0}],
            "email": {"host": "127.0.0.1", "port": smtp.port, "tls": "starttls",
                      "sender": "studyhub@example.com", "to": ["oncall@example.com"],
                      "username": "studyhub", "password_file": str(pw),
                      "ca_file": str(smtp.ca_file), "timeout_s": 10},
            **kw})
    return make


def send(engine: AlertEngine, settings: AlertSettings, signals: list[Signal] | None,
         now: datetime) -> list:
    alerts = engine.observe(signals, now) if signals is not None else engine.tick(now)
    deliveries = deliver(alerts, settings)
    assert all(d.ok for d in deliveries), [d.error for d in deliveries]
    return alerts


# ------------------------------------------------------------------ settings

def test_settings_refuse_inline_urls_secret_keys_and_plain_smtp_to_remote_hosts(tmp_path):
    with pytest.raises(ConfigError) as exc:
        parse_alert_settings({"webhook": [
            {"url": f"https://hooks.slack.com/services/T0/B0/{HOOK_TOKEN}"}]})
    assert "url_env" in str(exc.value) and HOOK_TOKEN not in str(exc.value)
    assert "\n" not in str(exc.value)
    email = {"host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"]}
    with pytest.raises(ConfigError, match="password: secrets never go in studyhub.toml"):
        parse_alert_settings({"email": {**email, "password": SMTP_PASSWORD}})
    with pytest.raises(ConfigError, match="api_token: secrets never go"):
        parse_alert_settings({"api_token": "x"})
    with pytest.raises(ConfigError, match="only for a relay on loopback"):
        parse_alert_settings({"email": {**email, "tls": "none"}})
    assert parse_alert_settings({"email": {**email, "host": "127.0.0.1", "tls": "none"}})
    with pytest.raises(ConfigError, match="exactly one of url_env or url_file"):
        parse_alert_settings({"webhook": [{}]})
    with pytest.raises(ConfigError, match="unknown_key"):
        parse_alert_settings({"unknown_key": 1})

    pw = tmp_path / "pw"
    pw.write_text(SMTP_PASSWORD)
    pw.chmod(0o644)
    loose = parse_alert_settings({"email": {**email, "username": "u", "password_file": str(pw)}})
    with pytest.raises(ConfigError, match="readable by others") as exc:
        loose.check_secrets()
    assert SMTP_PASSWORD not in str(exc.value)
    nopw = parse_alert_settings({"email": {**email, "username": "u"}})
    with pytest.raises(ConfigError, match=SMTP_PASSWORD_ENV):
        nopw.check_secrets()


def test_signal_from_job_maps_outcomes_to_states():
    def job(kind: str, outcome: str, error: str | None = None) -> JobOutcome:
        return JobOutcome("a1", "local", f"nightly-{kind}", kind, outcome, T0, 1.0, None, error)

    for kind in ("backup", "prune", "basebackup", "drill", "doctor"):
        for outcome in ("failed", "timeout"):
            s = signal_from_job(job(kind, outcome, "S3 said no"))
            assert s is not None and s.status == "critical" and s.key == f"local:job:nightly-{kind}"
        assert signal_from_job(job(kind, "ok")).status == "ok"
    assert signal_from_job(job("sample", "failed")).status == "warn"
    assert "S3 said no" in signal_from_job(job("backup", "failed", "S3 said no")).detail
    assert signal_from_job(job("backup", "missed")) is None
    assert signal_from_job(job("backup", "cancelled")) is None


# ------------------------------------------------------------------ the rules, delivered

def test_critical_arrives_once_per_channel_and_repeats_only_at_the_interval(
        channels, receiver, smtp, tmp_path):
    settings = channels(repeat_every_s=3600)
    engine = AlertEngine(settings, tmp_path / "state.json")
    send(engine, settings, [crit()], at(0))
    assert len(receiver.posts) == 1 and len(smtp.messages) == 1
    path, body = receiver.posts[0]
    assert path == f"/services/T0/B0/{HOOK_TOKEN}"
    assert body["text"].startswith("studyhub: CRITICAL local: Connections")
    assert smtp.subjects() == ["studyhub: CRITICAL local: Connections vs max_connections"]
    assert smtp.recipients == [["oncall@example.com"]] and smtp.logins == ["studyhub"]
    assert "97/97 (100%)" in smtp.messages[0].get_payload()

    for s in (60, 600, 3599):  # the same problem again: nothing new to say
        send(engine, settings, [crit()], at(s))
        assert engine.tick(at(s)) == []
    assert len(receiver.posts) == 1 and len(smtp.messages) == 1

    alerts = send(engine, settings, None, at(3600))  # the interval has passed: tick repeats
    assert [a.kind for a in alerts] == ["repeat"]
    assert len(receiver.posts) == 2 and len(smtp.messages) == 2
    assert "(still)" in receiver.texts()[1]
    assert send(engine, settings, [crit()], at(3700)) == []
    assert [a.kind for a in engine.tick(at(7200))] == ["repeat"]


def test_a_change_of_state_notifies_and_back_to_ok_resolves_exactly_once(
        channels, receiver, smtp, tmp_path):
    settings = channels()
    engine = AlertEngine(settings, tmp_path / "state.json")
    send(engine, settings, [crit(status="warn")], at(0))
    send(engine, settings, [crit(status="critical")], at(60))
    send(engine, settings, [crit(status="ok")], at(120))
    for s in (180, 240, 5000, 9000):
        send(engine, settings, [crit(status="ok")], at(s))
        send(engine, settings, None, at(s))
    assert len(receiver.posts) == 3 and len(smtp.messages) == 3
    texts = receiver.texts()
    assert texts[0].startswith("studyhub: WARN local: Connections")
    assert "CRITICAL local: Connections vs max_connections (was warn)" in texts[1]
    assert texts[2].startswith("studyhub: RESOLVED local: Connections")
    assert sum("RESOLVED" in s for s in smtp.subjects()) == 1
    assert engine.open_problems() == {}


def test_resolve_after_needs_consecutive_ok_observations(tmp_path):
    engine = AlertEngine(AlertSettings(resolve_after=3), None)
    assert [a.kind for a in engine.observe([crit()], at(0))] == ["firing"]
    assert engine.observe([crit(status="ok")], at(10)) == []
    assert engine.observe([crit(status="ok")], at(20)) == []
    assert engine.observe([crit()], at(30)) == []  # not resolved, so not firing again
    for s in (40, 50):
        assert engine.observe([crit(status="ok")], at(s)) == []
    assert [a.kind for a in engine.observe([crit(status="ok")], at(60))] == ["resolved"]


def test_a_flapping_check_sends_a_bounded_number_of_messages(channels, receiver, smtp,
                                                             tmp_path):
    settings = channels(flap_window_s=600, flap_max_changes=4)
    engine = AlertEngine(settings, tmp_path / "state.json")
    for i in range(20):  # ok/critical 20 times, 30 s apart
        send(engine, settings, [crit(status="critical" if i % 2 == 0 else "ok")], at(i * 30))
        send(engine, settings, None, at(i * 30 + 1))
    # at most one message per change until the limit, then one "flapping" notice
    bound = settings.flap_max_changes + 1
    assert len(receiver.posts) == len(smtp.messages) <= bound
    assert "FLAPPING" in receiver.texts()[-1] and "FLAPPING" in smtp.subjects()[-1]
    assert engine.open_problems() == {"local:connections": "flapping"}
    flapping_at = len(receiver.posts)

    # it stays ok; silence until it has been stable for the whole window, then one resolution
    last_change = 19 * 30
    for s in range(last_change, last_change + 600, 60):
        send(engine, settings, [crit(status="ok")], at(s))
    assert len(receiver.posts) == flapping_at
    send(engine, settings, None, at(last_change + 600))
    assert len(receiver.posts) == len(smtp.messages) == flapping_at + 1 <= bound + 1
    assert receiver.texts()[-1].startswith("studyhub: RESOLVED local: Connections")
    for s in range(1300, 9000, 300):
        send(engine, settings, [crit(status="ok")], at(s))
        send(engine, settings, None, at(s))
    assert len(receiver.posts) == flapping_at + 1


def test_a_flapping_check_that_settles_on_critical_says_so_once_then_repeats():
    engine = AlertEngine(AlertSettings(flap_window_s=600, flap_max_changes=3,
                                       repeat_every_s=3600), None)
    kinds = []
    for i in range(10):
        kinds += [a.kind for a in engine.observe(
            [crit(status="critical" if i % 2 == 0 else "ok")], at(i * 10))]
    assert kinds == ["firing", "resolved", "firing", "flapping"]
    kinds = []
    for s in range(100, 2000, 60):
        kinds += [(a.kind, a.status, a.previous) for a in engine.observe([crit()], at(s))]
    assert kinds == [("firing", "critical", "flapping")]  # at 700: 600 s after the last change
    assert engine.tick(at(700 + 3599)) == []
    assert [a.kind for a in engine.tick(at(700 + 3600))] == ["repeat"]


def test_engine_state_survives_a_restart_without_resending(channels, receiver, smtp,
                                                           tmp_path):
    settings = channels()
    state = tmp_path / "state.json"
    send(AlertEngine(settings, state), settings, [crit(), crit("local:vacuum", "warn")], at(0))
    assert len(receiver.posts) == 1 and len(smtp.messages) == 1
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert json.loads(state.read_text())["keys"]["local:connections"]["told"] == "critical"

    restarted = AlertEngine(settings, state)  # a new process reading the same state
    assert restarted.open_problems() == {"local:connections": "critical",
                                         "local:vacuum": "warn"}
    assert send(restarted, settings, [crit(), crit("local:vacuum", "warn")], at(120)) == []
    assert len(receiver.posts) == 1 and len(smtp.messages) == 1
    alerts = send(restarted, settings, [crit(status="ok"), crit("local:vacuum", "warn")],
                  at(180))
    assert [(a.key, a.kind) for a in alerts] == [("local:connections", "resolved")]
    # the repeat interval counts from the first send, before the restart
    assert [a.key for a in AlertEngine(settings, state).tick(at(3600))] == ["local:vacuum"]


def test_an_unreadable_state_file_starts_afresh(tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    engine = AlertEngine(AlertSettings(), state)
    assert [a.kind for a in engine.observe([crit()], at(0))] == ["firing"]
    assert "starting afresh" in caplog.text
    assert json.loads(state.read_text())["version"] == 1


# ------------------------------------------------------------------ secrets and failures

def test_smtp_password_never_in_log_records_or_errors(channels, smtp, tmp_path, caplog,
                                                      monkeypatch):
    caplog.set_level(logging.DEBUG)
    settings = channels()
    assert all(d.ok for d in deliver(AlertEngine(settings, None).observe([crit()], at(0)),
                                     settings))
    assert smtp.logins == ["studyhub"]

    wrong = tmp_path / "wrong-password"
    wrong.write_text("Wr0ng-" + SMTP_PASSWORD)
    wrong.chmod(0o600)
    bad = settings.model_copy(update={"webhook": [], "email": settings.email.model_copy(
        update={"password_file": str(wrong)})})
    deliveries = deliver(AlertEngine(bad, None).observe([crit()], at(0)), bad)
    assert [d.ok for d in deliveries] == [False]
    assert "login as studyhub refused (SMTP 535)" in deliveries[0].error
    assert len(smtp.messages) == 1

    # the password from the environment, refused the same way
    env_pw = bad.model_copy(update={"email": bad.email.model_copy(
        update={"password_file": None})})
    monkeypatch.setenv(SMTP_PASSWORD_ENV, "Env-" + SMTP_PASSWORD)
    deliveries += deliver(AlertEngine(env_pw, None).observe([crit()], at(0)), env_pw)
    assert not deliveries[-1].ok

    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    assert any("NOT sent" in r.getMessage() for r in ours)
    for text in [d.error or "" for d in deliveries] + [
            r.getMessage() + str(r.exc_info or "") for r in ours]:
        assert SMTP_PASSWORD not in text


def test_webhook_token_never_in_errors_and_retries_with_backoff(channels, receiver, tmp_path,
                                                                caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    settings = channels().model_copy(update={"email": None})
    alerts = AlertEngine(settings, None).observe([crit()], at(0))

    receiver.statuses = [503, 502]  # two failures, then 200
    [d] = deliver(alerts, settings)
    assert d.ok and d.attempts == 3 and len(receiver.posts) == 3

    receiver.status = 500
    [d] = deliver(alerts, settings)
    assert not d.ok and d.attempts == 3 and d.error == "webhook $STUDYHUB_TEST_HOOK_URL: HTTP 500"

    receiver.status = 404  # not retried: the URL is wrong, trying again will not help
    before = len(receiver.posts)
    [d404] = deliver(alerts, settings)
    assert d404.attempts == 1 and len(receiver.posts) == before + 1

    monkeypatch.setenv("STUDYHUB_TEST_HOOK_URL",
                       f"http://127.0.0.1:{free_port()}/services/T0/B0/{HOOK_TOKEN}")
    [refused] = deliver(alerts, settings)
    assert not refused.ok and "cannot connect" in refused.error

    for text in [d.error, d404.error, refused.error] + [r.getMessage() for r in caplog.records]:
        assert HOOK_TOKEN not in text and "/services/" not in text


def test_slack_body_has_text_and_blocks_and_escapes_control_characters():
    alerts = AlertEngine(AlertSettings(), None).observe(
        [Signal("local:x", "critical", "local: <b>&", "detail <@U123>", 3)], at(0))
    body = slack_body(alerts)
    assert body["text"].startswith("studyhub: CRITICAL local: <b>&")
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "context"]
    section = body["blocks"][1]["text"]
    assert section["type"] == "mrkdwn"
    assert "&lt;b&gt;&amp;" in section["text"] and "&lt;@U123&gt;" in section["text"]
    many = AlertEngine(AlertSettings(), None).observe(
        [Signal(f"local:c{i}", "warn", f"c{i}") for i in range(30)], at(0))
    blocks = slack_body(many)["blocks"]
    assert len(blocks) <= 50 and "… and 10 more" in blocks[-1]["elements"][0]["text"]


# ------------------------------------------------------------------ the agent's hook

def _doctor(profile, **limits) -> JobOutcome:
    with connect(profile, "ops", autocommit=True) as conn:
        report = run_doctor(conn, profile, limits={**DEFAULT_THRESHOLDS, **limits})
    return JobOutcome("test-agent", profile.name, "doctor", "doctor", "ok", T0, 0.5, report,
                      None)


def test_alert_hook_with_real_doctor_reports_sends_once_and_resolves_once(
        profile, channels, receiver, smtp, tmp_path):
    settings = channels()
    config = AgentConfig(name="test-agent", alerts=settings)
    [hook] = build_hooks(config, tmp_path / "agent")
    assert isinstance(hook, AlertHook)
    try:
        # a critical check: every connection counts as too many
        critical = _doctor(profile, **{"connections.warn_pct": 0, "connections.critical_pct": 0})
        assert {c.name: c.status for c in critical.result.checks}["connections"] == "critical"
        hook.job_finished(critical)
        assert hook.flush()
        assert len(receiver.posts) == 1 and len(smtp.messages) == 1
        assert "CRITICAL local: Connections vs max_connections" in receiver.texts()[0]

        hook.job_finished(replace(critical, started_at=T0 + timedelta(minutes=1)))
        assert hook.flush()
        assert len(receiver.posts) == 1 and len(smtp.messages) == 1

        healthy = _doctor(profile)  # the default thresholds: connections are fine
        assert {c.name: c.status for c in healthy.result.checks}["connections"] == "ok"
        hook.job_finished(healthy)
        hook.job_finished(healthy)
        assert hook.flush()
        assert len(receiver.posts) == 2 and len(smtp.messages) == 2
        resolved = receiver.texts()[1]
        assert resolved.startswith("studyhub: RESOLVED local: Connections vs max_connections")
        assert "CRITICAL" not in resolved and "WARN" not in resolved

        # a failed backup: critical; the next good one resolves it
        failed = JobOutcome("test-agent", "local", "backup", "backup", "failed", T0, 3.0, None,
                            "target s3://bucket/x: access denied")
        hook.job_finished(failed)
        hook.job_finished(failed)
        assert hook.flush()
        assert len(receiver.posts) == 3
        assert "CRITICAL local: backup (backup)" in receiver.texts()[2]
        assert "access denied" in smtp.messages[2].get_payload()
        hook.job_finished(replace(failed, outcome="ok", error=None))
        assert hook.flush()
        assert receiver.texts()[3].startswith("studyhub: RESOLVED local: backup (backup)")
    finally:
        hook.close()
    state = tmp_path / "agent" / ALERT_STATE_FILE
    assert state.exists() and oct((tmp_path / "agent").stat().st_mode & 0o777) == "0o700"
    assert SMTP_PASSWORD not in state.read_text() and HOOK_TOKEN not in state.read_text()


def test_alert_hook_ticks_repeats_on_its_own_thread(tmp_path):
    sent: list[list] = []
    repeated = threading.Event()
    clock = [T0]

    def record(alerts, settings):
        sent.append(alerts)
        if any(a.kind == "repeat" for a in alerts):
            repeated.set()
        return []

    hook = AlertHook(AlertSettings(repeat_every_s=60), tmp_path / "s.json", tick_every_s=0.01,
                     send=record, clock=lambda: clock[0])
    try:
        hook.job_finished(JobOutcome("a", "local", "drill", "drill", "timeout", T0, 9.0, None,
                                     None))
        assert hook.flush()
        assert [a.kind for batch in sent for a in batch] == ["firing"]
        clock[0] = T0 + timedelta(seconds=61)  # no job finishes: only the hook's ticks run
        assert repeated.wait(timeout=30)
        assert [a.kind for batch in sent for a in batch] == ["firing", "repeat"]
    finally:
        hook.close()


def test_build_hooks_refuses_a_missing_webhook_url_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDYHUB_TEST_MISSING_URL", raising=False)
    config = AgentConfig(alerts=parse_alert_settings(
        {"webhook": [{"url_env": "STUDYHUB_TEST_MISSING_URL"}]}))
    with pytest.raises(ConfigError, match="STUDYHUB_TEST_MISSING_URL is not set"):
        build_hooks(config, tmp_path / "agent")
    assert build_hooks(AgentConfig(), tmp_path / "none") == []
    assert not os.path.exists(tmp_path / "none")
