"""Benchmark: adding a NOT NULL column to a large, busy flashcard_reviews.

Same run, same table, same concurrent writers (3 threads: half INSERTs, half UPDATEs of random
existing rows), two migrations:

- baseline: the naive one-transaction migration (ADD COLUMN, UPDATE every row, SET NOT NULL);
- m01: the expand / batched backfill / CHECK NOT VALID → VALIDATE → SET NOT NULL recipe.

Prints the writers' waits (p50, p99, max), writes completed during the migration, and the
migration's own duration, then the ratios. Writers here have a 60 s lock_timeout so that the
waits are measured, not cut off. Run: scripts/uv run python bench/migrate_backfill.py [ROWS]
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

home = bench_home()

from studyhub.local import LocalCluster  # noqa: E402
from studyhub.ops import migrate  # noqa: E402
from tests.conftest import connect_as  # noqa: E402
from tests.migration_examples import write_example  # noqa: E402
from tests.test_migrate_backfill import fill_flashcard_reviews  # noqa: E402

os.environ["STUDYHUB_HOME"] = str(home)  # tests.conftest clears STUDYHUB_* on import


def run_with_writers(profile, db, student, card, ids, migrate_fn):
    stop = threading.Event()
    waits: list[tuple[float, float]] = []  # (started, finished) of each write

    def writer(seed):
        rng = random.Random(seed)
        with connect_as(profile, "app", db) as conn:
            conn.execute("SET lock_timeout = '60s'")
            while not stop.is_set():
                t0 = time.monotonic()
                if rng.random() < 0.5:
                    conn.execute(
                        "INSERT INTO flashcard_reviews (student_id, flashcard_id, rating, "
                        "reviewed_at, state, stability, difficulty, elapsed_days, scheduled_days,"
                        " due) VALUES (%s, %s, 3, now(), 2, 4, 5, 1, 4, now())", (student, card))
                else:
                    conn.execute("UPDATE flashcard_reviews SET review_duration_ms = 1 "
                                 "WHERE id = %s", (rng.choice(ids),))
                waits.append((t0, time.monotonic()))
                time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    migrate_fn()
    end = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    # Every write that overlapped the migration counts, including those it blocked until its
    # COMMIT and that finished just after it returned (counting only writes finished before
    # `end` dropped exactly the longest waits, at random).
    during = sorted(t1 - t0 for t0, t1 in waits if t0 <= end and t1 >= start)
    return {
        "migration_s": end - start,
        "writes": sum(1 for _, t1 in waits if start <= t1 <= end),
        "p50_ms": statistics.median(during) * 1000,
        "p99_ms": during[int(len(during) * 0.99) - 1] * 1000,
        "max_ms": during[-1] * 1000,
    }


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    cluster = LocalCluster(home)
    try:
        cluster.up()
        profile = cluster.profile()
        db = "bench_backfill"
        cluster.create_database(db)
        down = migrate.script_directory().get_revision("m01").down_revision
        migrate.upgrade(profile, down, database=db)
        t0 = time.monotonic()
        student, card, ids = fill_flashcard_reviews(profile, db, rows)
        print(f"flashcard_reviews: {rows:,} rows generated in {time.monotonic() - t0:.1f} s")
        versions = home / "versions"
        naive = write_example(versions, '''
            op.add_column("flashcard_reviews", sa.Column("recorded_at",
                          sa.DateTime(timezone=True), server_default=sa.text("now()")))
            op.execute("UPDATE flashcard_reviews SET recorded_at = reviewed_at")
            op.alter_column("flashcard_reviews", "recorded_at", nullable=False)
        ''', downgrade='op.drop_column("flashcard_reviews", "recorded_at")', down=down,
            rev="naive")
        base = run_with_writers(profile, db, student, card, ids, lambda: migrate.upgrade(
            profile, naive, database=db, lock_timeout="60s", extra_versions=[versions],
            unsafe_reason="the naive baseline: the gate refuses it, measuring it is the point"))
        migrate.downgrade(profile, down, database=db, extra_versions=[versions])
        with connect_as(profile, "app", db) as conn:
            conn.execute("VACUUM ANALYZE flashcard_reviews")
        ours_result = []
        ours = run_with_writers(profile, db, student, card, ids, lambda: ours_result.append(
            migrate.upgrade(profile, "m01", database=db, lock_timeout="5s", retries=3)))
        print("m01: " + "; ".join(ours_result[0].notes))
        print(f"{'':24}{'naive (1 transaction)':>24}{'m01 (batched recipe)':>24}")
        for key, label in (("migration_s", "migration duration s"), ("writes", "writes during it"),
                           ("p50_ms", "writer wait p50 ms"), ("p99_ms", "writer wait p99 ms"),
                           ("max_ms", "writer wait max ms")):
            print(f"{label:24}{base[key]:>24.1f}{ours[key]:>24.1f}")
        print(f"ratios (naive / m01): max wait {base['max_ms'] / ours['max_ms']:.1f}x, "
              f"p99 wait {base['p99_ms'] / ours['p99_ms']:.1f}x; "
              f"writes completed {ours['writes'] / max(base['writes'], 1):.1f}x more with m01; "
              f"m01 takes {ours['migration_s'] / base['migration_s']:.1f}x as long")
        t0 = time.monotonic()
        report = migrate.lint.lint()
        print(f"migrate lint of {len(report.migrations)} migrations (pglast + squawk): "
              f"{time.monotonic() - t0:.2f} s, {report.errors} errors")
        t0 = time.monotonic()
        report = migrate.lint.lint(downgrade=True)
        print(f"migrate lint --downgrade of {len(report.migrations)} downgrades: "
              f"{time.monotonic() - t0:.2f} s, {report.errors} errors")
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
