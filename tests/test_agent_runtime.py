"""``studyhub agent`` against the session cluster: runs recorded in ops.agent_runs and in
status.json, the heartbeat, hooks, no overlapping runs (missed), timeouts that cancel with no
half-written rows, one unreachable profile not stopping another and reconnecting, SIGTERM on a
real ``studyhub agent run`` process, ``agent status`` and ``--once``, and audit lines naming the
agent for a scheduled backup."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from studyhub.agent.config import parse_agent_config
from studyhub.agent.events import JobOutcome
from studyhub.agent.jobs import JobContext
from studyhub.agent.runtime import Agent
from studyhub.audit import read_audit
from studyhub.errors import StudyhubError
from studyhub.local import pick_free_port
from studyhub.ops.health import DoctorReport
from studyhub.profiles import Profile
from tests.conftest import connect_as, make_home


class Recorder:
    """A hook that keeps every outcome it is given."""

    def __init__(self) -> None:
        self.outcomes: list[JobOutcome] = []
        self.closed = False

    def job_finished(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)

    def close(self) -> None:
        self.closed = True

    def of(self, profile: str, job: str, outcome: str | None = None) -> list[JobOutcome]:
        return [o for o in list(self.outcomes) if o.profile == profile and o.job == job
                and (outcome is None or o.outcome == outcome)]


def wait_for(condition, what: str, limit_s: float = 60) -> None:
    """Poll until ``condition()`` holds (a bound for a hung test, not an assertion on speed)."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def runs(profile: Profile, agent: str) -> list[dict]:
    with connect_as(profile, "admin") as conn:
        cur = conn.execute("SELECT * FROM ops.agent_runs WHERE agent = %s ORDER BY id", [agent])
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def heartbeats(profile: Profile, agent: str) -> dict[str, dict]:
    with connect_as(profile, "admin") as conn:
        cur = conn.execute("SELECT * FROM ops.agent_heartbeats WHERE agent = %s", [agent])
        names = [d.name for d in cur.description]
        return {r[1]: dict(zip(names, r)) for r in cur.fetchall()}


def config(name: str, **agent):
    return parse_agent_config({"name": name, **agent})


@pytest.fixture
def name() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def state_dir():
    d = make_home("studyhub-agent-state-")
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def run_in_thread(agent: Agent) -> threading.Thread:
    t = threading.Thread(target=agent.run_forever, kwargs={"install_signals": False}, daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------------------ --once
def test_once_runs_the_reading_jobs_records_them_and_hands_each_to_the_hooks(
        migrated, name, state_dir):
    hook = Recorder()
    outcomes = Agent(config(name), [migrated], state_dir, [hook]).run_once()
    assert {o.job: o.outcome for o in outcomes} == {
        "doctor": "ok", "sample": "ok", "prune_history": "ok", "capture": "ok"}, \
        [(o.job, o.error) for o in outcomes]
    doctor = hook.of("local", "doctor")[0]
    assert isinstance(doctor.result, DoctorReport) and doctor.kind == "doctor"
    assert doctor.agent == name and doctor.started_at.tzinfo is not None
    assert hook.closed
    rows = runs(migrated, name)
    assert sorted(r["job"] for r in rows) == ["capture", "doctor", "prune_history", "sample"]
    assert all(r["outcome"] == "ok" and r["profile"] == "local" for r in rows)
    assert heartbeats(migrated, name)["local"]["pid"] == os.getpid()
    status = json.loads((state_dir / "status.json").read_text())
    assert status["agent"] == name and status["stopped_at"]
    assert status["profiles"]["local"]["jobs"]["doctor"]["last"]["outcome"] == "ok"
    assert oct((state_dir / "status.json").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------------ overlap
def test_a_run_due_while_the_previous_still_runs_is_missed_not_stacked(
        migrated, name, state_dir):
    release = threading.Event()
    active, most = [0], [0]
    lock = threading.Lock()

    def slow(ctx: JobContext):
        ctx.connect().execute("SELECT 1")
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        release.wait(60)
        with lock:
            active[0] -= 1
        return None, "done"

    hook = Recorder()
    cfg = config(name, jobs={"doctor": {"every_s": 0.1, "timeout_s": 120},
                             "sample": {"enabled": False}, "capture": {"enabled": False},
                             "prune_history": {"enabled": False}})
    agent = Agent(cfg, [migrated], state_dir, [hook], kinds={"doctor": slow})
    t = run_in_thread(agent)
    wait_for(lambda: len(hook.of("local", "doctor", "missed")) >= 3, "three missed runs")
    release.set()
    wait_for(lambda: hook.of("local", "doctor", "ok"), "the slow run ends")
    agent.stop()
    t.join(60)
    assert not t.is_alive()
    assert most[0] == 1  # never two runs of the job at once
    rows = runs(migrated, name)
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("missed") >= 3 and "ok" in outcomes
    missed = next(r for r in rows if r["outcome"] == "missed")
    assert "still runs" in missed["detail"]


# ------------------------------------------------------------------------------ timeout
def test_a_job_over_its_timeout_is_cancelled_recorded_as_timeout_and_writes_nothing(
        migrated, name, state_dir):
    table = f"agent_timeout_{uuid.uuid4().hex[:6]}"
    with connect_as(migrated, "app") as conn:
        conn.execute(f"CREATE TABLE {table} (n int)")

    def half_then_sleep(ctx: JobContext):
        conn = ctx.connect("app")
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            conn.execute("SELECT pg_sleep(60)")
            conn.execute(f"INSERT INTO {table} VALUES (2)")
        return None, "never"

    hook = Recorder()
    cfg = config(name, jobs={"doctor": {"every_s": 60, "timeout_s": 1}})
    outcomes = Agent(cfg, [migrated], state_dir, [hook],
                     kinds={"doctor": half_then_sleep}).run_once(["doctor"])
    assert [(o.job, o.outcome) for o in outcomes] == [("doctor", "timeout")]
    assert "timeout of 1 s" in outcomes[0].error
    with connect_as(migrated, "app") as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        conn.execute(f"DROP TABLE {table}")
        # nothing of the job is still running on the server
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                            "'%pg_sleep(60)%' AND pid <> pg_backend_pid()").fetchone()[0] == 0
    assert [r["outcome"] for r in runs(migrated, name)] == ["timeout"]


# ------------------------------------------------------------------- a profile down and back
class Forwarder:
    """A TCP port on loopback that, once opened, forwards to the cluster: the second
    profile's "server" is down until then."""

    def __init__(self, to_port: int) -> None:
        self.port = pick_free_port()
        self.to_port = to_port
        self.sock: socket.socket | None = None

    def open(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.to_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.sock:
            self.sock.close()


def test_an_unreachable_profile_does_not_stop_another_and_reconnects_when_back(
        migrated, name, state_dir):
    forward = Forwarder(migrated.port)
    other = dataclasses.replace(migrated, name="staging", port=forward.port)

    def quick(ctx: JobContext):
        ctx.connect().execute("SELECT 1")
        return None, "answered"

    hook = Recorder()
    cfg = config(name, heartbeat_every_s=0.2, reconnect_max_s=0.5,
                 jobs={"doctor": {"every_s": 0.2}, "sample": {"enabled": False},
                       "capture": {"enabled": False}, "prune_history": {"enabled": False}})
    agent = Agent(cfg, [migrated, other], state_dir, [hook], kinds={"doctor": quick})
    t = run_in_thread(agent)
    try:
        wait_for(lambda: len(hook.of("staging", "doctor", "failed")) >= 2
                 and len(hook.of("local", "doctor", "ok")) >= 3, "local runs while staging is down")
        assert "unreachable" in hook.of("staging", "doctor", "failed")[0].error
        status = json.loads((state_dir / "status.json").read_text())
        assert status["profiles"]["staging"]["state"] == "down"
        assert status["profiles"]["local"]["state"] == "up"
        forward.open()
        wait_for(lambda: hook.of("staging", "doctor", "ok"), "staging back")
    finally:
        agent.stop()
        t.join(60)
        forward.close()
    beats = heartbeats(migrated, name)
    assert set(beats) == {"local", "staging"}
    staging = [r["outcome"] for r in runs(migrated, name) if r["profile"] == "staging"]
    # the failures while it was down were kept and written once it was back
    assert "failed" in staging and "ok" in staging


# ------------------------------------------------------------------------------ SIGTERM
def test_sigterm_stops_a_running_agent_process_cleanly(migrated, name, state_dir, tmp_path):
    toml = tmp_path / "studyhub.toml"
    toml.write_text(f"""
[agent]
name = "{name}"
heartbeat_every_s = 0.5
state_dir = "{state_dir}"
[agent.jobs.doctor]
every_s = 1
[agent.jobs.sample]
enabled = false
[agent.jobs.capture]
enabled = false
[agent.jobs.prune_history]
enabled = false
""")
    env = {**os.environ, "STUDYHUB_CONFIG": str(toml)}
    proc = subprocess.Popen([sys.executable, "-m", "studyhub.cli.main", "agent", "run"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["outcome"] == "ok" for r in runs(migrated, name))
                 or proc.poll() is not None, "a recorded run")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"agent {name} stopped" in err and "local/doctor ok" in err
    assert "password" not in err.lower()
    assert heartbeats(migrated, name)["local"]["pid"] == proc.pid
    status = json.loads((state_dir / "status.json").read_text())
    assert status["stopped_at"] and status["pid"] == proc.pid


# ---------------------------------------------------------------------------- agent status
def test_status_reads_the_runs_and_exits_non_zero_after_a_failed_job(
        migrated, name, state_dir, tmp_path, cli, monkeypatch):
    toml = tmp_path / "studyhub.toml"
    toml.write_text(f'[agent]\nname = "{name}"\nstate_dir = "{state_dir}"\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(toml))
    assert cli("agent", "run", "--once", "--job", "doctor").exit_code == 0
    r = cli("agent", "status", "--json")
    assert r.exit_code == 0, r.stdout
    st = json.loads(r.stdout)
    local = st["profiles"][0]
    assert local["source"] == "database" and not local["heartbeat_stale"]
    doctor = next(j for j in local["jobs"] if j["job"] == "doctor")
    assert doctor["last_outcome"] == "ok" and doctor["next_due"]

    def boom(ctx: JobContext):
        raise StudyhubError("capture: pretend the disk is full")

    cfg = config(name, state_dir=str(state_dir))
    Agent(cfg, ["local"], state_dir, [], kinds={"capture": boom}).run_once(["capture"])
    r = cli("agent", "status", "--json")
    assert r.exit_code == 1
    jobs = {j["job"]: j for j in json.loads(r.stdout)["profiles"][0]["jobs"]}
    assert jobs["capture"]["last_outcome"] == "failed"
    assert jobs["capture"]["last_detail"] == "capture: pretend the disk is full"
    r = cli("agent", "status")
    assert r.exit_code == 1 and "pretend the disk is full" in r.stdout


def test_status_comes_from_the_state_file_when_the_database_is_down(
        migrated, name, state_dir, tmp_path, cli, monkeypatch):
    Agent(config(name), [migrated], state_dir, []).run_once(["doctor"])
    toml = tmp_path / "studyhub.toml"
    toml.write_text(f'[agent]\nname = "{name}"\nstate_dir = "{state_dir}"\n'
                    f'profiles = ["staging"]\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(toml))
    # the state file names the profile "local": copy it as "staging", which cannot connect
    status = json.loads((state_dir / "status.json").read_text())
    status["profiles"]["staging"] = status["profiles"].pop("local")
    (state_dir / "status.json").write_text(json.dumps(status))
    monkeypatch.setenv("STUDYHUB_STAGING_HOST", "127.0.0.1")
    monkeypatch.setenv("STUDYHUB_STAGING_PORT", str(pick_free_port()))
    r = cli("agent", "status", "--json")
    st = json.loads(r.stdout)["profiles"][0]
    assert st["source"] == "state file" and st["error"].startswith("cannot connect")
    assert next(j for j in st["jobs"] if j["job"] == "doctor")["last_outcome"] == "ok"


# --------------------------------------------------------------------- a scheduled backup
def test_a_scheduled_backup_runs_in_its_own_process_and_its_audit_line_names_the_agent(
        migrated, name, state_dir, tmp_path, cli, monkeypatch):
    target = make_home("studyhub-agent-backups-")
    toml = tmp_path / "studyhub.toml"
    toml.write_text(f'[agent]\nname = "{name}"\nstate_dir = "{state_dir}"\n'
                    f'[agent.jobs.backup]\nschedule = "0 3 * * *"\ntarget = "{target}"\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(toml))
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    r = cli("agent", "run", "--once", "--job", "backup")
    assert r.exit_code == 0, r.stderr
    sets = [p for p in Path(target).iterdir() if not p.name.startswith(".")]
    assert len(sets) == 1 and (sets[0] / "manifest.json").exists()
    line = [a for a in read_audit() if a["action"] == "backup.create"][-1]
    assert line["outcome"] == "ok" and line["actor"] == f"agent {name}"
    row = runs(migrated, name)[-1]
    assert (row["job"], row["outcome"]) == ("backup", "ok") and sets[0].name in row["detail"]
