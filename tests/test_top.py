"""studyhub top: a headless snapshot, and the live view driven through a real terminal (pty)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.conftest import connect_as
from tests.diag_helpers import Background, alive, as_json, is_running, is_waiting_for_lock, wait_for


def test_top_once_shows_header_and_blocking_sessions(profile, fresh_db, cli):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (1)")
    holder = connect_as(profile, "app", fresh_db, autocommit=False)
    holder.execute("UPDATE t SET id = 1 WHERE id = 1")
    waiter = Background(profile, "UPDATE t SET id = 2 WHERE id = 1", database=fresh_db)
    try:
        wait_for(lambda: is_waiting_for_lock(profile, waiter.pid), what="the waiter to block")
        snap = as_json(cli("top", "--once", "--json", "--interval", "0.2", "-d", fresh_db,
                           "--sort", "blocking"))
        assert set(snap) >= {"tps", "cache_hit_pct", "connections_by_state", "max_connections",
                             "replication_lag_bytes", "sessions"}
        by_pid = {s["pid"]: s for s in snap["sessions"]}
        assert by_pid[holder.info.backend_pid]["blocking"] is True
        assert by_pid[holder.info.backend_pid]["state"] == "idle in transaction"
        assert by_pid[waiter.pid]["blocked_by"] == [holder.info.backend_pid]
        assert snap["sessions"][0]["pid"] == holder.info.backend_pid  # blockers sort first
        text = cli("top", "--once", "--interval", "0.2", "--filter", "UPDATE t SET id = 2")
        assert "studyhub top" in text.stdout
        rows = [ln.split()[0] for ln in text.stdout.splitlines() if ln.strip()[:1].isdigit()]
        assert rows == [str(waiter.pid)]  # the filter hides the holder's own row
    finally:
        holder.rollback()
        holder.close()
        waiter.close()


def _read_until(fd: int, needle: str, timeout: float = 20) -> str:
    buf = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                buf += os.read(fd, 65536).decode(errors="ignore")
            except OSError:
                break
            if needle in buf:
                return buf
    raise AssertionError(f"{needle!r} not shown; screen had: {buf[-2000:]!r}")


def test_top_live_view_filters_and_terminates_the_selected_session(profile, fresh_db, cluster_home):
    victim = Background(profile, "SELECT pg_sleep(60)", database=fresh_db,
                        setup=["SET application_name = 'victim-app'"])
    wait_for(lambda: is_running(profile, victim.pid, "pg_sleep"), what="the victim")
    pid, fd = pty.fork()
    if pid == 0:  # child: the real command in a real terminal
        os.environ.update({"STUDYHUB_HOME": str(cluster_home), "COLUMNS": "160", "LINES": "40",
                           "TERM": "xterm"})
        os.execv(sys.executable, [sys.executable, "-m", "studyhub.cli.main", "top",
                                  "--interval", "0.5"])
    try:
        _read_until(fd, "studyhub top")
        os.write(fd, b"/victim-app\r")
        _read_until(fd, "filter: victim-app")
        os.write(fd, b"t")
        _read_until(fd, f"terminate PID {victim.pid} (studyhub_app@{fresh_db} victim-app)?")
        os.write(fd, b"y")
        _read_until(fd, f"terminate {victim.pid}: terminated")
        victim.join()
        assert victim.error is not None and not alive(victim.conn)
        os.write(fd, b"q")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        victim.close()
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_top_without_a_terminal_points_to_once(migrated):
    proc = subprocess.run([sys.executable, "-m", "studyhub.cli.main", "top"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 1 and "--once" in proc.stderr


def test_top_refuses_cancel_and_terminate_on_production_unless_named(
        cluster, profile, fresh_db, monkeypatch, tmp_path):
    from studyhub.cli import top as top_cli
    from studyhub.connect import connect
    from studyhub.ops import activity
    from studyhub.profiles import resolve_profile
    from tests.diag_helpers import remote_profile_env

    remote_profile_env(monkeypatch, cluster, "production", database=fresh_db, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    victim = Background(profile, "SELECT pg_sleep(60)", database=fresh_db,
                        setup=["SET application_name = 'prod-victim'"])
    try:
        wait_for(lambda: is_running(profile, victim.pid, "pg_sleep"), what="the victim")
        implicit = resolve_profile(None)  # production from STUDYHUB_PROFILE: not named
        with connect(implicit, "ops", autocommit=True) as conn:
            snap = activity.top_snapshot(conn)
            st = top_cli.TopState(text_filter="prod-victim")
            st.rows = activity.sort_sessions(snap, st.sort, st.text_filter)
            assert [r.pid for r in st.rows] == [victim.pid]
            for key in ("t", "c"):
                assert top_cli._handle_key(implicit, conn, st, key) is False
                assert st.pending is None  # nothing armed
                assert "name it explicitly with --profile production" in st.message
            top_cli._handle_key(implicit, conn, st, "y")
            assert is_running(profile, victim.pid, "pg_sleep")  # untouched
            named = resolve_profile("production")  # --profile production
            top_cli._handle_key(named, conn, st, "t")
            assert st.pending and st.pending[:2] == ("terminate", victim.pid)
            top_cli._handle_key(named, conn, st, "y")
            assert st.message == f"terminate {victim.pid}: terminated"
        victim.join()
        assert not alive(victim.conn)
    finally:
        victim.close()
