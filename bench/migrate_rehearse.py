"""Benchmark: what the rehearsal's measurement costs, and whether it tells a blocking migration
from a safe one.

Same run, same data: one database with a busy flashcard_reviews (ROWS reviews, default
300,000) at m01's parent revision; every measurement runs on a fresh copy of it
(CREATE DATABASE … TEMPLATE), as the rehearsal runs on a fresh fork.

(a) overhead: the naive migration (ADD COLUMN … DEFAULT now(), UPDATE every row, SET NOT NULL,
    one transaction) applied with plain ``migrate.upgrade`` vs with ``measure_migrations``
    without workload (the instrumentation: per-statement snapshots, event hooks, the 25 ms lock
    watcher) and with the 4-client app workload (a whole rehearsal's apply phase), REPEAT times
    alternating, medians compared;
(b) naive vs m01 (the expand / batched backfill / NOT VALID → VALIDATE → SET NOT NULL recipe)
    measured by ``measure_migrations`` under the same 4-client app workload: per statement
    the lock taken and held, the waits behind it, blocked writes, rewrites, WAL and disk.

Run: scripts/uv run python bench/migrate_rehearse.py [ROWS] [REPEAT]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

home = bench_home()

from psycopg import sql  # noqa: E402

from studyhub.local import LocalCluster  # noqa: E402
from studyhub.local.state import APP_ROLE  # noqa: E402
from studyhub.ops import migrate  # noqa: E402
from studyhub.ops.migrate.rehearse.measure import WorkloadSpec, measure_migrations  # noqa: E402
from tests.migration_examples import write_example  # noqa: E402
from tests.test_migrate_backfill import fill_flashcard_reviews  # noqa: E402

os.environ["STUDYHUB_HOME"] = str(home)  # tests.conftest clears STUDYHUB_* on import

MB = 1024 * 1024


def copy_of(cluster: LocalCluster, template: str, name: str) -> str:
    with cluster.admin_connect() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(template), sql.Identifier(APP_ROLE)))
    return name


def show(title: str, m) -> None:
    print(f"\n{title}: {', '.join(m.revisions)} in {m.duration_s:.1f} s "
          f"(failed: {m.failed.statement if m.failed else 'no'})")
    print(f"  {'statement':58} {'n':>3} {'wall s':>7} {'lock':>24} {'held s':>7} "
          f"{'waiting':>7} {'max s':>6} {'p99 s':>6} {'wr max s':>8} {'rewrote':>17} "
          f"{'rows':>8} {'WAL MB':>7} {'disk MB':>7}")
    for s in m.statements:
        lock = f"{s.lock_mode or '-'}" if s.lock_mode else "-"
        print(f"  {s.statement[:58]:58} {s.executions:>3} {s.wall_s:>7.3f} {lock:>24} "
              f"{(s.lock_held_s if s.lock_held_s is not None else 0):>7.3f} "
              f"{s.waits.sessions:>7} {s.waits.max_s:>6.3f} {s.waits.p99_s:>6.3f} "
              f"{s.blocked_writes_max_s:>8.3f} {','.join(s.rewrote) or '-':>17} "
              f"{s.rows_rewritten if s.rows_rewritten is not None else '-':>8} "
              f"{s.wal_bytes / MB:>7.1f} {s.disk_growth_bytes / MB:>7.1f}")
    w = m.workload
    print(f"  workload ({w.kind}, {w.clients} clients): {w.requests} requests, {w.errors} errors, "
          f"latency p50 {w.p50_s * 1000:.1f} ms, p99 {w.p99_s * 1000:.1f} ms, "
          f"max {w.max_s * 1000:.0f} ms; blocked writes {w.blocked_writes}, "
          f"blocked reads {w.blocked_reads}")


def summary(m) -> dict:
    ae = [s.lock_held_s or 0 for s in m.statements if s.lock_mode == "ACCESS EXCLUSIVE"]
    return {
        "blocked_write_max_s": max((s.blocked_writes_max_s for s in m.statements), default=0.0),
        "wait_p99_s": max((s.waits.p99_s for s in m.statements), default=0.0),
        "access_exclusive_held_s": max(ae, default=0.0),
        "rewrites": sum(len(s.rewrote) for s in m.statements),
        "rows_per_execution_max": max(((s.rows_rewritten or 0) // s.executions
                                       for s in m.statements), default=0),
        "blocked_writes": m.workload.blocked_writes,
        "requests": m.workload.requests,
        "request_max_s": m.workload.max_s,
    }


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cluster = LocalCluster(home)
    try:
        cluster.up()
        profile = cluster.profile()
        src = "bench_rehearse_src"
        cluster.create_database(src)
        down = migrate.script_directory().get_revision("m01").down_revision
        migrate.upgrade(profile, down, database=src)
        t0 = time.monotonic()
        fill_flashcard_reviews(profile, src, rows)
        print(f"flashcard_reviews: {rows:,} rows generated in {time.monotonic() - t0:.1f} s")
        versions = home / "versions"
        naive = write_example(versions, '''
            op.add_column("flashcard_reviews", sa.Column("recorded_at",
                          sa.DateTime(timezone=True), server_default=sa.text("now()")))
            op.execute("UPDATE flashcard_reviews SET recorded_at = reviewed_at")
            op.alter_column("flashcard_reviews", "recorded_at", nullable=False)
        ''', downgrade='op.drop_column("flashcard_reviews", "recorded_at")', down=down,
            rev="naive")
        with cluster.admin_connect(src) as conn:
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE flashcard_reviews")

        # (a) overhead
        plain, bare, loaded = [], [], []
        for i in range(repeat):
            db = copy_of(cluster, src, "bench_rehearse_a")
            t0 = time.monotonic()
            migrate.upgrade(profile, naive, database=db, lock_timeout="60s",
                            extra_versions=[versions])
            plain.append(time.monotonic() - t0)
            db = copy_of(cluster, src, "bench_rehearse_a")
            t0 = time.monotonic()
            m = measure_migrations(profile, to=naive, database=db, lock_timeout="60s",
                                   extra_versions=[versions], workload=WorkloadSpec(clients=0))
            bare.append(time.monotonic() - t0)
            assert m.failed is None, m.failed
            db = copy_of(cluster, src, "bench_rehearse_a")
            t0 = time.monotonic()
            m = measure_migrations(profile, to=naive, database=db, lock_timeout="60s",
                                   extra_versions=[versions], workload=WorkloadSpec(clients=4))
            loaded.append(time.monotonic() - t0)
            assert m.failed is None, m.failed
        p, b, ld = (statistics.median(x) for x in (plain, bare, loaded))
        print(f"\n(a) naive migration on {rows:,} rows, median of {repeat} fresh copies each:")
        print(f"  upgrade() directly                          {p:7.2f} s   "
              f"(runs: {', '.join(f'{x:.2f}' for x in plain)})")
        print(f"  measure_migrations, no workload             {b:7.2f} s   "
              f"(runs: {', '.join(f'{x:.2f}' for x in bare)})")
        print(f"  measure_migrations, 4-client app workload   {ld:7.2f} s   "
              f"(runs: {', '.join(f'{x:.2f}' for x in loaded)})")
        print(f"  ratios: instrumentation {b / p:.2f}x the direct upgrade; "
              f"with the workload running {ld / p:.2f}x")

        # (b) naive vs m01, both measured under the workload
        db = copy_of(cluster, src, "bench_rehearse_naive")
        m_naive = measure_migrations(profile, to=naive, database=db, lock_timeout="60s",
                                     extra_versions=[versions],
                                     workload=WorkloadSpec(clients=4))
        db = copy_of(cluster, src, "bench_rehearse_m01")
        m_safe = measure_migrations(profile, to="m01", database=db, lock_timeout="5s",
                                    workload=WorkloadSpec(clients=4))
        show("(b) naive (one transaction)", m_naive)
        show("(b) m01 (batched recipe)", m_safe)
        a, s = summary(m_naive), summary(m_safe)
        print(f"\n  {'':34}{'naive':>12}{'m01':>12}")
        for key in a:
            print(f"  {key:34}{a[key]:>12.3f}{s[key]:>12.3f}" if isinstance(a[key], float)
                  else f"  {key:34}{a[key]:>12}{s[key]:>12}")

        def ratio(x, y):
            return f"{x / y:.0f}x" if y > 0 else f"{x:.3f} s vs none"

        print(f"  ratios (naive / m01): longest blocked write "
              f"{ratio(a['blocked_write_max_s'], s['blocked_write_max_s'])}, ACCESS EXCLUSIVE "
              f"held {ratio(a['access_exclusive_held_s'], s['access_exclusive_held_s'])}, "
              f"table rewrites {a['rewrites']} vs {s['rewrites']}, rows rewritten per statement "
              f"{a['rows_per_execution_max']:,} vs {s['rows_per_execution_max']:,}, requests "
              f"{a['requests']} vs {s['requests']}")
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
