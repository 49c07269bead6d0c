"""No password on any process's command line while our subprocesses run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from studyhub.local import LocalCluster
from tests.conftest import make_home


def _passwords(cluster: LocalCluster) -> list[str]:
    return [line.split(":")[4] for line in cluster.passfile.read_text().splitlines()]


def _all_cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
            except OSError:
                pass
    return out


class CmdlineWatcher:
    """Scan every process's argv until stopped; remember what it saw."""

    def __init__(self, secrets: list[str], look_for: str):
        self.secrets = secrets
        self.look_for = look_for
        self.leaks: list[str] = []
        self.seen_target = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for cmd in _all_cmdlines():
                if self.look_for in cmd:
                    self.seen_target += 1
                if any(s in cmd for s in self.secrets):
                    self.leaks.append(cmd)
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_no_password_on_argv_during_basebackup(monkeypatch):
    # Secrets exported in the operator's shell must not travel into the servers' environment
    # (the postgres OS user can read /proc/<pid>/environ of its own processes).
    shell_secrets = {"STUDYHUB_PRODUCTION_PASSWORD": "shell-secret-pw-1",
                     "DIGITALOCEAN_TOKEN": "shell-secret-token-2",
                     "MY_API_KEY": "shell-secret-key-3"}
    for name, value in shell_secrets.items():
        monkeypatch.setenv(name, value)
    home = make_home("studyhub-argv-")
    cluster = LocalCluster(home)
    try:
        cluster.up()
        postmaster = int((cluster.primary_dir / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{postmaster}/environ").read_bytes().decode(errors="replace")
        assert "PATH=" in environ  # the ordinary environment is still there
        assert not [v for v in shell_secrets.values() if v in environ]
        assert "STUDYHUB_" not in environ
        # make the base backup take long enough to be observed
        with cluster.admin_connect("studyhub") as conn:
            conn.execute("CREATE TABLE ballast AS SELECT g, repeat('x', 500) AS pad "
                         "FROM generate_series(1, 200000) g")
        with CmdlineWatcher(_passwords(cluster), "pg_basebackup") as watch:
            cluster.up(replica=True)
        assert watch.seen_target > 0, "the watcher never saw pg_basebackup running"
        assert watch.leaks == []
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_no_password_on_argv_during_psql(cluster, migrated):
    with CmdlineWatcher(_passwords(cluster), "pg_sleep") as watch:
        proc = subprocess.run(
            [sys.executable, "-m", "studyhub.cli.main", "local", "psql", "--role", "ops",
             "-c", "SELECT pg_sleep(0.5)"],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert watch.seen_target > 0
    assert watch.leaks == []


def test_children_inherit_no_secrets_from_the_shell(profile, monkeypatch):
    from studyhub.connect import child_env

    monkeypatch.setenv("STUDYHUB_STAGING_PASSWORD", "shell-secret-pw-4")
    monkeypatch.setenv("GITHUB_TOKEN", "shell-secret-token-5")
    monkeypatch.setenv("PGPASSWORD", "shell-secret-pw-6")
    env = child_env(profile, "ops")
    assert not {"shell-secret-pw-4", "shell-secret-token-5", "shell-secret-pw-6"} & set(env.values())
    assert env["PGUSER"] == profile.users["ops"] and env["PATH"] == os.environ["PATH"]
