"""Dashboard page render times on a production-like data set, against the ops calls behind
each page measured in the same run.

    uv run python bench/dashboard.py [--students 20000] [--rounds 5] [--history-hours 168]
                                     [--home /tmp/studyhub-bench-dashboard]

Starts (or reuses) a local cluster under its own STUDYHUB_HOME, seeds a database at the
migrations' head with ``--students`` students (``studyhub.ops.seed``; kept between runs: a
database that already has them is reused), stores ``--history-hours`` of 5-minute statement
snapshots (500 statements each, what the agent's capture job leaves after a week), runs an app-like
workload so pg_stat_statements has something to show, then serves the dashboard (uvicorn on
loopback) and requests every page ``--rounds`` times after a warm-up.

For each page it prints the median and slowest full HTTP request (connect, ops calls, template,
transfer) and, as the baseline, the median time of the same ops calls made directly (one fresh
connection each, as ``studyhub diag …`` does), and their ratio: what the web layer adds. The aim
is under a second per page; nothing is asserted. The cluster is left running for the next run;
remove it with ``STUDYHUB_HOME=<home> uv run studyhub local destroy --yes``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from common import bench_home  # bench/common.py (scripts run from bench/)
from typing import Callable

DEFAULT_HOME = "/tmp/studyhub-bench-dashboard"
DATABASE = "bench_dashboard"
WORKLOAD = (
    "SELECT count(*) FROM flashcards WHERE student_id = %(s)s AND due <= now()",
    "SELECT id, title FROM notes WHERE student_id = %(s)s ORDER BY updated_at DESC LIMIT 20",
    "SELECT count(*) FROM flashcard_reviews WHERE student_id = %(s)s",
    "SELECT id FROM notes WHERE title = %(t)s",  # no index on title: sequential scans
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def fabricate_history(conn, hours: float, every_min: float = 5, per_snapshot: int = 500) -> int:
    """Snapshots every ``every_min`` over the last ``hours``, ``per_snapshot`` statements each
    (the real ones, padded with made-up ones), counters growing steadily: the history a capture
    loop leaves. Skipped when this database already has that much. Returns rows written."""
    from dataclasses import replace

    from studyhub.ops import statements

    n = int(hours * 60 / every_min)
    have = conn.execute("SELECT count(DISTINCT captured_at) FROM ops.statement_snapshots "
                        "WHERE database = current_database()").fetchone()[0]
    if n <= have <= n + 10:  # this history (and the few real captures since) is there
        return 0
    conn.execute("DELETE FROM ops.statement_snapshots WHERE database = current_database()")
    real = statements.current_stats(conn)[:per_snapshot]
    made_up = [statements.StatementStats(7_000_000_000 + i, "studyhub_app",
                                         f"SELECT {i} /* made up */", 1000, 500.0, 1000, 900,
                                         100, 1.0, 0.0)
               for i in range(per_snapshot - len(real))]
    reset = statements.stats_reset_at(conn)
    start = datetime.now(timezone.utc) - timedelta(hours=hours)
    for k in range(n):
        f = (k + 1) / n
        scaled = [replace(s, calls=int(s.calls * f) + k, total_exec_ms=s.total_exec_ms * f + k,
                          rows=int(s.rows * f)) for s in real + made_up]
        statements.save_snapshot(conn, scaled, reset,
                                 captured_at=start + timedelta(minutes=k * every_min))
    return n * per_snapshot


def main() -> int:  # noqa: C901 - a script: set up, measure, print
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", default=DEFAULT_HOME, help="STUDYHUB_HOME of the bench cluster")
    parser.add_argument("--history-hours", type=float, default=168,
                        help="stored statement history to fabricate, as a capture job every "
                             "5 minutes keeping 500 statements would have left")
    args = parser.parse_args()

    home = bench_home(args.home)
    os.environ.setdefault("STUDYHUB_CONFIG", str(home / "absent.toml"))

    import httpx
    import uvicorn

    from studyhub.connect import connect
    from studyhub.dashboard.app import create_dashboard
    from studyhub.local import LocalCluster
    from studyhub.ops import activity, advisor, explain, health, indexes, migrate, replication, space
    from studyhub.ops import capture, statements
    from studyhub.ops.seed import seed_database
    from studyhub.serving import DashboardSettings

    cluster = LocalCluster(home)
    cluster.up()
    profile = cluster.profile()
    with cluster.admin_connect() as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (DATABASE,)).fetchone()
    students = 0
    if exists:
        with connect(profile, "app", database=DATABASE) as conn:
            students = conn.execute("SELECT count(*) FROM students").fetchone()[0]
    if students != args.students:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
        migrate.upgrade(profile, database=DATABASE)
        print(f"seeding {args.students:,} students …", flush=True)
        started = time.perf_counter()
        result = seed_database(profile, students=args.students, database=DATABASE)
        print(f"seeded {result.total_rows:,} rows in {time.perf_counter() - started:.0f} s",
              flush=True)
    else:
        migrate.upgrade(profile, database=DATABASE)
        print(f"reusing {DATABASE} with {students:,} students", flush=True)

    if args.history_hours > 0:
        with connect(profile, "ops", database=DATABASE, autocommit=True) as conn:
            started = time.perf_counter()
            written = fabricate_history(conn, args.history_hours)
            if written:
                print(f"stored {written:,} history rows ({args.history_hours:g} h) in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)

    # workload and history: three snapshots with work in between
    settings = DashboardSettings(database=DATABASE)
    app = create_dashboard(settings)
    with connect(profile, "app", database=DATABASE, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM students ORDER BY id LIMIT 200")]
        for _ in range(3):
            capture.capture_snapshots(profile, database=DATABASE)  # what the agent's job does
            for i, sid in enumerate(ids):
                for q in WORKLOAD:
                    conn.execute(q, {"s": sid, "t": f"Note {i}"})
        capture.capture_snapshots(profile, database=DATABASE)
        qid = conn.execute(
            "SELECT queryid FROM pg_stat_statements WHERE query LIKE 'SELECT count(*) FROM "
            "flashcards WHERE student_id%' ORDER BY calls DESC LIMIT 1").fetchone()[0]

    with connect(profile, "app", database=DATABASE) as conn:
        sizes = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                             ).fetchone()[0]

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def ops(role: str = "ops", autocommit: bool = True):
        return connect(profile, role, database=DATABASE, autocommit=autocommit,
                       application_name="bench baseline")

    now = datetime.now(timezone.utc)

    def b_doctor() -> None:
        with ops() as c:
            health.run_doctor(c, profile)

    def b_queries() -> None:
        with ops() as c:
            r = statements.slow_queries(c, limit=25, save=False)
            statements.statement_history(c, now - timedelta(days=1),
                                         [s["queryid"] for s in r.statements])
            statements.latest_snapshot_at(c)

    def b_queries_window() -> None:
        with ops() as c:
            r = statements.slow_queries(c, limit=25, save=False, since=timedelta(days=1))
            statements.statement_history(c, now - timedelta(days=1),
                                         [s["queryid"] for s in r.statements])

    def b_query() -> None:
        with ops() as c:
            statements.current_stats(c)
            statements.statement_history(c, now - timedelta(days=1), [qid])

    def b_query_week() -> None:
        with ops() as c:
            statements.current_stats(c)
            statements.statement_history(c, now - timedelta(days=7), [qid])

    def b_explain() -> None:
        with ops() as c:
            text = next(s.query for s in statements.current_stats(c) if s.queryid == qid)
        with ops("app", autocommit=False) as c:
            explain.explain_statement(c, text, timeout="10s")

    def b_indexes() -> None:
        with ops() as c:
            indexes.index_report(c)

    def b_advise() -> None:
        with ops() as c:
            report = indexes.index_report(c)
        with ops("app", autocommit=False) as c:
            advisor.attach_advice(report, advisor.advise(c))

    def b_live() -> None:
        with ops() as c:
            activity.top_snapshot(c)
            activity.blocking_tree(c)
            activity.connection_report(c, "state", profile)
            replication.replication_report(profile, c)

    def b_space() -> None:
        with ops() as c:
            space.table_sizes(c)
            indexes.index_definitions(c)
            space.size_history(c, now - timedelta(days=7))

    def b_backups() -> None:
        from studyhub.ops import backup, cluster

        cluster.backend_for(profile).backups()
        backup.list_sets()

    def b_privacy() -> None:
        from studyhub.audit import read_audit
        from studyhub.ops import privacy

        with ops() as c:
            privacy.policy_report(c)
        with ops("app") as c:
            privacy.erasure_audit(c)
        read_audit()

    pages = [
        ("profiles", "/", b_doctor),
        ("overview", "/p/local/", b_doctor),
        ("queries", "/p/local/queries", b_queries),
        ("queries 24h", "/p/local/queries?window=24h", b_queries_window),
        ("query", f"/p/local/queries/{qid}", b_query),
        ("query 7d", f"/p/local/queries/{qid}?window=7d", b_query_week),
        ("explain", f"/p/local/queries/{qid}/explain", b_explain),
        ("indexes", "/p/local/indexes", b_indexes),
        ("indexes+advice", "/p/local/indexes?advise=1", b_advise),
        ("live", "/p/local/live", b_live),
        ("space", "/p/local/space", b_space),
        ("backups", "/p/local/backups", b_backups),
        ("privacy", "/p/local/privacy", b_privacy),
    ]
    with connect(profile, "ops", database=DATABASE) as conn:
        history_rows = conn.execute("SELECT count(*) FROM ops.statement_snapshots").fetchone()[0]
    print(f"\n{args.students:,} students · database {sizes} · {history_rows:,} stored statement "
          f"snapshot rows · {os.cpu_count()} cores · {args.rounds} rounds after a warm-up · "
          "times in ms\n")
    print(f"{'page':<16}{'status':>7}{'median':>9}{'max':>9}{'ops calls':>11}{'ratio':>8}"
          f"{'KiB':>7}")
    slow = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for name, path, baseline in pages:
            last: dict[str, int] = {}

            def get(path: str = path, last: dict[str, int] = last) -> None:
                r = http.get(path)
                last["status"], last["size"] = r.status_code, len(r.content)

            page_s = timed(get, args.rounds)
            base_s = timed(baseline, args.rounds) if baseline else None
            med = statistics.median(page_s) * 1000
            bmed = statistics.median(base_s) * 1000 if base_s else None
            ratio = f"{med / bmed:.2f}x" if bmed else "-"
            print(f"{name:<16}{last['status']:>7}{med:>9.0f}{max(page_s) * 1000:>9.0f}"
                  f"{(f'{bmed:.0f}' if bmed else '-'):>11}{ratio:>8}"
                  f"{last['size'] / 1024:>7.0f}", flush=True)
            if med >= 1000:
                slow.append(name)
    server.should_exit = True
    thread.join(10)
    print("\nevery page under a second (median)" if not slow
          else f"\nover a second (median): {', '.join(slow)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
