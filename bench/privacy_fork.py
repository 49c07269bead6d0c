"""Benchmark: what keeping erased people erased in forks, and k-anonymity for the students
table, cost — each against its baseline, measured in the same run on the same data.

1. ``cluster fork`` at a point in time with the erasure ledger re-applied (the default) against
   the same fork with ``--no-reapply-erasures``. The ledger holds ``--erased`` people: half erased
   before the fork's time (absent from it: the common case, each still looked up in every table)
   and half after (present: erased again). Prints both fork times, their ratio and the re-apply
   time per ledger entry.
2. ``privacy anonymize --dataset students`` with the generalisation ladder (``--min-group 5``:
   several GROUP BY passes until at most 5% is suppressed) against one pass (``--min-group 1``:
   the cost of the old exact-count export, one grouping pass + the export). Prints both and the
   ratio, and which level was chosen.

Each figure is the median of ``--repeat`` runs (a shared 2-core machine is noisy). The bench's
own cluster lives under a new directory in /tmp and is destroyed at the end.

Run: uv run python bench/privacy_fork.py [--students 1000] [--erased 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

home = bench_home()

from studyhub.local import LocalCluster  # noqa: E402
from studyhub.ops import migrate, privacy  # noqa: E402
from studyhub.ops.cluster import LocalBackend  # noqa: E402
from studyhub.ops.privacy import PseudonymKey  # noqa: E402
from studyhub.ops.privacy import anonymize as anon  # noqa: E402
from studyhub.ops.seed import seed_database  # noqa: E402
from tests.conftest import connect_as  # noqa: E402

os.environ["STUDYHUB_HOME"] = str(home)  # tests.conftest clears STUDYHUB_* on import
KEY = PseudonymKey(b"bench-privacy-fork-key-0123456789abcdef", "bench")


def erase(profile, student_ids) -> None:
    with connect_as(profile, "app", autocommit=False) as conn:
        for sid in student_ids:
            privacy.erase_person(conn, KEY, student_id=sid)


def fork_once(backend: LocalBackend, at, name: str, reapply: bool):
    plan = backend.fork_plan(at, name, reapply_erasures=reapply)
    try:
        return backend.fork(plan)
    finally:
        backend.fork_remove(backend.fork_remove_plan(name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, default=1000)
    ap.add_argument("--erased", type=int, default=200, help="people in the erasure ledger")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cluster = LocalCluster(home)
    cluster.up()
    profile = cluster.profile()
    migrate.upgrade(profile)
    seeded = seed_database(profile, students=args.students)
    print(f"cluster under {home}: {args.students:,} students, {seeded.total_rows:,} rows; "
          f"{args.erased} people in the erasure ledger; median of {args.repeat}")
    backend = LocalBackend(profile, cluster)
    backend.basebackup(backend.basebackup_plan())
    with connect_as(profile) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM students ORDER BY id LIMIT %s",
                                          (args.erased,))]
    half = len(ids) // 2
    erase(profile, ids[:half])
    with connect_as(profile) as conn:
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.05)
    erase(profile, ids[half:])

    # 1. fork with and without the erasure ledger, alternated (after one unmeasured fork that
    #    archives the newest WAL and warms the caches)
    fork_once(backend, at, "bench-warmup", False)
    plain_s, full_s, reapply_s = [], [], []
    last = None
    for i in range(args.repeat):
        plain_s.append(fork_once(backend, at, f"bench-plain-{i}", False).duration_s)
        last = fork_once(backend, at, f"bench-ledger-{i}", True)
        full_s.append(last.duration_s)
        reapply_s.append(last.erasures.duration_s)
    e = last.erasures
    plain, full, reapply = (statistics.median(x) for x in (plain_s, full_s, reapply_s))
    print("\n1. fork at a point in time (restore + verify + replay + promote + verification)")
    print(f"   without the ledger (--no-reapply-erasures)  {plain:6.2f} s")
    print(f"   with the ledger re-applied (default)        {full:6.2f} s   of which re-apply "
          f"{reapply:.2f} s")
    print(f"   ledger: {e.ledger_entries} entries, {e.reapplied} erased again "
          f"({e.rows_deleted:,} rows), {e.already_absent} already absent; "
          f"{1000 * reapply / max(1, e.ledger_entries):.1f} ms per entry")
    print(f"   ratio with/without {full / plain:.2f}")

    # 2. anonymize students: the ladder against one pass
    out = Path(tempfile.mkdtemp(prefix="bench-anon-", dir=str(home)))
    one_s, ladder_s = [], []
    for i in range(args.repeat):
        for k, bucket in ((1, one_s), (anon.DEFAULT_MIN_GROUP, ladder_s)):
            with connect_as(profile, autocommit=False) as conn:
                res = anon.anonymize(conn, KEY, out / f"s-{k}-{i}.csv", dataset="students",
                                     min_group=k)
            bucket.append(res.duration_s)
            if k != 1:
                chosen = res
    one, ladder = statistics.median(one_s), statistics.median(ladder_s)
    print(f"\n2. anonymize --dataset students ({args.students - args.erased:,} students)")
    print(f"   one pass (--min-group 1, level 0)            {one:6.2f} s")
    print(f"   generalised (--min-group {anon.DEFAULT_MIN_GROUP}, level {chosen.level}) "
          f"        {ladder:6.2f} s   ({chosen.rows_written:,} rows released, "
          f"{chosen.rows_suppressed} suppressed)")
    print(f"   level {chosen.level}: {chosen.generalisation}")
    print(f"   ratio generalised/one pass {ladder / one:.2f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        LocalCluster(home).destroy()
        shutil.rmtree(home, ignore_errors=True)
