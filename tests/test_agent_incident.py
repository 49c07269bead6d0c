"""The agent end to end, as on a bad night: a real ``studyhub agent run`` process watches the
session cluster with the doctor and the history sampler on short schedules and alerts to a
webhook receiver and an SMTP server on loopback. A blocking chain is planted and held until the
doctor's ``blocked_queries`` check is critical: the alert arrives exactly once on each channel;
the chain is released: the resolution arrives exactly once on each channel; afterwards
``studyhub top --at`` (and ``diag locks --at``) replay the chain from the agent's history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.alert_servers import WebhookReceiver, start_smtp
from tests.conftest import connect_as, make_home
from tests.diag_helpers import Background, as_json, is_waiting_for_lock, wait_for

SMTP_PASSWORD = "smtp-Pa55-" + uuid.uuid4().hex[:8]
HOOK_TOKEN = "hook" + uuid.uuid4().hex
KEY = "local:blocked_queries"


def webhook_alerts(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    """(headline, key) of every alert in every webhook body received so far: each alert is a
    section block (its headline in bold) followed by a context block naming its key."""
    found = []
    for _path, body in list(receiver.posts):
        blocks = body["blocks"]
        for section, context in zip(blocks, blocks[1:]):
            if section["type"] == "section" and context["type"] == "context":
                headline = section["text"]["text"].split("*")[1]
                key = context["elements"][0]["text"].split("`")[1]
                found.append((headline, key))
    return found


def email_alerts(smtp) -> list[tuple[str, str]]:
    """(headline line, key) of every alert in every e-mail received so far."""
    found = []
    for msg in list(smtp.messages):
        lines = msg.get_payload(decode=True).decode().splitlines()
        for line, nxt in zip(lines, lines[1:]):
            if nxt.startswith("  key "):
                found.append((line, nxt.split()[1]))
    return found


def of_key(alerts: list[tuple[str, str]], word: str) -> list[str]:
    return [h for h, k in alerts if k == KEY and h.startswith(word)]


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.stop()


@pytest.fixture
def smtp(tmp_path: Path):
    s = start_smtp(tmp_path, "studyhub", SMTP_PASSWORD)
    yield s
    s.stop()


@pytest.fixture
def incident_table(migrated):
    name = f"incident_{uuid.uuid4().hex[:8]}"
    with connect_as(migrated, "app") as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        c.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    yield name
    with connect_as(migrated, "app") as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.slow
def test_a_blocking_chain_alerts_once_resolves_once_and_replays_with_top_at(
        migrated, receiver, smtp, incident_table, tmp_path, cli):
    name = f"agent-{uuid.uuid4().hex[:8]}"
    state_dir = make_home("studyhub-agent-incident-")
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    password_file.chmod(0o600)
    toml = tmp_path / "studyhub.toml"
    toml.write_text(f"""
[doctor]
"blocked_queries.warn_s" = 1
"blocked_queries.critical_s" = 1

[agent]
name = "{name}"
heartbeat_every_s = 1
state_dir = "{state_dir}"
[agent.jobs.doctor]
every_s = 1
[agent.jobs.capture]
enabled = false
[agent.history]
sample_every_s = 1
[agent.alerts]
repeat_every_s = 3600
[[agent.alerts.webhook]]
name = "oncall"
url_env = "STUDYHUB_TEST_HOOK_URL"
[agent.alerts.email]
host = "127.0.0.1"
port = {smtp.port}
tls = "starttls"
sender = "studyhub@example.com"
to = ["oncall@example.com"]
username = "studyhub"
password_file = "{password_file}"
ca_file = "{smtp.ca_file}"
""")
    env = {**os.environ, "STUDYHUB_CONFIG": str(toml),
           "STUDYHUB_TEST_HOOK_URL": receiver.url(f"/services/T0/B0/{HOOK_TOKEN}")}
    proc = subprocess.Popen([sys.executable, "-m", "studyhub.cli.main", "agent", "run"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = waiter = None
    try:
        # the doctor has run (and sees no blocked query) before the chain is planted
        wait_for(lambda: _doctor_runs(migrated, name) >= 1 or proc.poll() is not None,
                 timeout=120, what="a first doctor run")
        assert proc.poll() is None, proc.communicate()[1]
        assert not of_key(webhook_alerts(receiver), "CRITICAL")

        # the chain: the holder updates the row and stays idle in transaction; the waiter
        # updates the same row and waits for it
        holder = connect_as(migrated, "app", autocommit=False)
        holder.execute("SET application_name = 'incident-holder'")
        holder.execute(f"UPDATE {incident_table} SET v = 'held' WHERE id = 1")
        waiter = Background(migrated, f"UPDATE {incident_table} SET v = 'waits' WHERE id = 1",
                            setup=["SET application_name = 'incident-waiter'"])
        wait_for(lambda: is_waiting_for_lock(migrated, waiter.pid), what="the waiter to block")

        wait_for(lambda: of_key(webhook_alerts(receiver), "CRITICAL")
                 and of_key(email_alerts(smtp), "CRITICAL"), timeout=120,
                 what="the critical alert on both channels")
        # the sampler has stored the chain (it samples every second)
        wait_for(lambda: _sampled_blocked(migrated, waiter.pid, holder.info.backend_pid),
                 timeout=60, what="a sample holding the chain")
        during = datetime.now(timezone.utc)
        holder_pid = holder.info.backend_pid

        holder.rollback()
        holder.close()
        waiter.join()
        assert waiter.error is None

        wait_for(lambda: of_key(webhook_alerts(receiver), "RESOLVED")
                 and of_key(email_alerts(smtp), "RESOLVED"), timeout=120,
                 what="the resolution on both channels")
        # a few more doctor rounds: nothing more is said about it
        rounds = _doctor_runs(migrated, name)
        wait_for(lambda: _doctor_runs(migrated, name) >= rounds + 3, timeout=60,
                 what="three more doctor runs")
    finally:
        if holder is not None and not holder.closed:
            holder.rollback()
            holder.close()
        if waiter is not None:
            waiter.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err

    for alerts in (webhook_alerts(receiver), email_alerts(smtp)):
        assert len(of_key(alerts, "CRITICAL")) == 1, alerts
        assert len(of_key(alerts, "RESOLVED")) == 1, alerts
        assert not of_key(alerts, "WARN"), alerts
    assert smtp.logins  # over STARTTLS with AUTH
    assert SMTP_PASSWORD not in err and HOOK_TOKEN not in err

    # afterwards: the chain replays from the agent's history
    top = as_json(cli("top", "--at", during.isoformat(), "--json"))
    by_pid = {s["pid"]: s for s in top["sessions"]}
    assert by_pid[holder_pid]["blocking"] is True
    assert by_pid[waiter.pid]["blocked_by"] == [holder_pid]
    assert [r["pid"] for r in top["tree"]] == [holder_pid]
    locks = cli("diag", "locks", "--at", during.isoformat())
    assert locks.exit_code == 0, locks.stderr
    assert "root blocker" in locks.stdout and "incident-holder" in locks.stdout


def _sampled_blocked(profile, waiter_pid: int, holder_pid: int) -> bool:
    with connect_as(profile, "admin") as c:
        return bool(c.execute(
            "SELECT 1 FROM ops.activity_samples WHERE pid = %s AND %s = ANY(blocked_by)",
            (waiter_pid, holder_pid)).fetchone())


def _doctor_runs(profile, agent: str) -> int:
    with connect_as(profile, "admin") as c:
        return c.execute("SELECT count(*) FROM ops.agent_runs WHERE agent = %s AND job = 'doctor'",
                         (agent,)).fetchone()[0]
