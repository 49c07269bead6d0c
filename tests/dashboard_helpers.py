"""For the dashboard's tests: a running workload (real statements in pg_stat_statements), a
real dashboard server on a free loopback port, and the browser's launch settings."""

from __future__ import annotations

import os
import threading

import psycopg

from tests.conftest import connect_as

WORKLOAD = (
    "SELECT count(*) FROM flashcards WHERE student_id = (SELECT id FROM students "
    "ORDER BY id LIMIT 1 OFFSET %(i)s) AND due <= now()",
    "SELECT id FROM notes WHERE title = %(t)s",  # no index on title: sequential scans
    "SELECT s.full_name, count(*) FROM students s JOIN notes n ON n.student_id = s.id "
    "GROUP BY s.full_name ORDER BY 2 DESC LIMIT 5",
)


class Workload:
    """App-like statements in a loop on one connection until stopped (bounded by ``max_s``)."""

    def __init__(self, profile, database: str | None = None, max_s: float = 600) -> None:
        self.conn = connect_as(profile, "app", database, application_name="studyhub-workload")
        self.stop_event = threading.Event()
        self.max_s = max_s
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        deadline = time.monotonic() + self.max_s
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            for q in WORKLOAD:
                try:
                    self.conn.execute(q, {"i": self.rounds % 50, "t": f"Note {self.rounds % 7}"})
                except psycopg.Error:
                    return
            self.rounds += 1
            self.stop_event.wait(0.02)

    def __enter__(self) -> "Workload":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.conn.close()


# ------------------------------------------------------------------ a real server, a real browser
# Debian's Chromium (scripts/bootstrap.sh --tests installs it); STUDYHUB_TEST_CHROMIUM points
# the tests at another build (tests/test_needs.py points it at nothing)
CHROMIUM = os.environ.get("STUDYHUB_TEST_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardServer:
    """``create_dashboard(settings)`` served by uvicorn in a thread on a free loopback port,
    with the options `studyhub dashboard` uses."""

    def __init__(self, settings) -> None:
        import uvicorn

        from studyhub.dashboard.app import create_dashboard
        from studyhub.serving import UVICORN_OPTIONS

        self.app = create_dashboard(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning",
            **UVICORN_OPTIONS))  # as `studyhub dashboard` runs it
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "DashboardServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def form_fields(html: str) -> dict[str, str]:
    """Hidden inputs of a page (the CSRF token, backend_start …)."""
    import re

    from html import unescape

    return {m.group(1): unescape(m.group(2)) for m in
            re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)}
