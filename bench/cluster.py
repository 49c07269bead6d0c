"""Benchmark: what local point-in-time recovery costs, and how fast a fork is.

One run, one throwaway cluster, baselines measured in the same run:

1. Base backup — ours (tar, zstd level 1, WAL streamed, manifest) against a plain uncompressed
   copy (``pg_basebackup -Fp``) and tar + gzip: time and size.
2. WAL archiving — the same write burst with ``archive_mode = on`` (every local primary now)
   and ``off`` (restart in between), alternated REPEATS times: the overhead ratio.
3. Fork at a point in time (restore + pg_verifybackup + replay of the WAL written since the
   backup + promote + verification) against cloning the live primary with ``pg_basebackup -Fp``
   (a copy of *now*, which cannot go back in time): the ratio and the replay rate.

Run: scripts/uv run python bench/cluster.py [BALLAST_MB] [WRITE_MB] [REPEATS]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

home = bench_home()

from studyhub.local import REPLICATION_ROLE, LocalCluster, proc  # noqa: E402
from studyhub.ops import migrate  # noqa: E402
from studyhub.ops.cluster import LocalBackend  # noqa: E402
from tests.conftest import connect_as  # noqa: E402

os.environ["STUDYHUB_HOME"] = str(home)  # tests.conftest clears STUDYHUB_* on import

BALLAST_MB = int(sys.argv[1]) if len(sys.argv) > 1 else 200
WRITE_MB = int(sys.argv[2]) if len(sys.argv) > 2 else 200
REPEATS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
ROW_BYTES = 1000


def write_mb(profile, mb: int, table: str = "ballast") -> float:
    rows = mb * 1024 * 1024 // ROW_BYTES
    with connect_as(profile, "admin", "studyhub") as conn:
        t0 = time.monotonic()
        # ~1000 bytes of hex per row: compresses about as well as text data does (≈2:1)
        conn.execute(f"INSERT INTO {table} SELECT g, (SELECT string_agg(md5(random()::text), '') "
                     f"FROM generate_series(1, {ROW_BYTES // 32}) WHERE g > 0) "
                     f"FROM generate_series(1, {rows}) g")
        conn.execute("CHECKPOINT")  # the burst's full cost, not just what fits in memory
        return time.monotonic() - t0


def pg_basebackup(cluster: LocalCluster, target: Path, *args: str) -> float:
    target.mkdir()
    proc.chown_to_server(target)
    t0 = time.monotonic()
    proc.run_server_cmd(
        [str(proc.pg_program("pg_basebackup")), "-h", "127.0.0.1", "-p",
         str(cluster.load_state().primary_port), "-U", REPLICATION_ROLE, "-D", str(target),
         "-X", "stream", "-c", "fast", "--no-password", *args],
        env={"PGPASSFILE": str(cluster.replicator_passfile)}, timeout=3600)
    return time.monotonic() - t0


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def restart_primary(cluster: LocalCluster, *, archive: bool) -> None:
    cluster._stop_postgres(cluster.primary_dir)
    cluster._write_conf(cluster.primary_dir, cluster.load_state().primary_port, replica=False,
                        archive=archive)
    cluster._start_postgres(cluster.primary_dir, "primary", lambda _: None)


def main() -> None:
    cluster = LocalCluster(home)
    print(f"cluster under {home}; ballast {BALLAST_MB} MB, write bursts {WRITE_MB} MB, "
          f"{REPEATS} repeats")
    cluster.up()
    profile = cluster.profile()
    migrate.upgrade(profile)
    with connect_as(profile, "admin", "studyhub") as conn:
        conn.execute("CREATE TABLE ballast (n int, pad text)")
        conn.execute("CREATE TABLE burst (n int, pad text)")
    write_mb(profile, BALLAST_MB)
    backend = LocalBackend(profile, cluster)
    scratch = home / "scratch"
    scratch.mkdir()
    proc.chown_to_server(scratch)

    # 1. base backup formats
    t0 = time.monotonic()
    ours = backend.basebackup(backend.basebackup_plan())
    ours_s = time.monotonic() - t0
    ours_mb = (ours.size_bytes or 0) / 2**20
    plain_s = pg_basebackup(cluster, scratch / "plain", "-Fp")
    gzip_s = pg_basebackup(cluster, scratch / "gzip", "-Ft", "--compress=client-gzip:1")
    plain_mb, gzip_mb = size_mb(scratch / "plain"), size_mb(scratch / "gzip")
    print("\n1. base backup            time_s   size_MB")
    print(f"   plain (-Fp)            {plain_s:6.2f}   {plain_mb:7.1f}")
    print(f"   tar + gzip:1           {gzip_s:6.2f}   {gzip_mb:7.1f}")
    print(f"   ours: tar + zstd:1     {ours_s:6.2f}   {ours_mb:7.1f}")
    print(f"   ratios ours/plain: time {ours_s / plain_s:.2f}, size {ours_mb / plain_mb:.2f}; "
          f"ours/gzip: time {ours_s / gzip_s:.2f}, size {ours_mb / gzip_mb:.2f}")
    shutil.rmtree(scratch / "gzip")

    # 2. archiving overhead on a write burst (alternating, median of each)
    on_s: list[float] = []
    off_s: list[float] = []
    for _ in range(REPEATS):
        for archive, bucket in ((False, off_s), (True, on_s)):
            restart_primary(cluster, archive=archive)
            with connect_as(profile, "admin", "studyhub") as conn:
                conn.execute("TRUNCATE burst")
                conn.execute("CHECKPOINT")
            bucket.append(write_mb(profile, WRITE_MB, "burst"))
    off, on = statistics.median(off_s), statistics.median(on_s)
    print(f"\n2. write burst of {WRITE_MB} MB   archive off {off:.2f} s, archive on {on:.2f} s "
          f"(medians of {REPEATS}); ratio on/off {on / off:.2f}")

    # 3. fork at a point in time vs cloning the live primary
    backend.basebackup(backend.basebackup_plan())
    write_mb(profile, WRITE_MB)  # WAL the fork has to replay
    with connect_as(profile, "admin", "studyhub") as conn:
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        expected = conn.execute("SELECT count(*) FROM ballast").fetchone()[0]
        conn.execute("INSERT INTO ballast VALUES (-1, 'after the target')")
    plan = backend.fork_plan(at, "bench-fork")
    t0 = time.monotonic()
    phases: list[tuple[float, str]] = []
    result = backend.fork(plan, progress=lambda msg: phases.append((time.monotonic() - t0, msg)))
    with connect_as(replace(profile, port=result.fork.port), "admin", "studyhub") as conn:
        got = conn.execute("SELECT count(*) FROM ballast").fetchone()[0]
    assert got == expected, (got, expected)
    clone_s = pg_basebackup(cluster, scratch / "clone", "-Fp")
    print(f"\n3. fork at a point in time (restore + verify + replay {WRITE_MB} MB + promote + "
          f"verification): {result.duration_s:.2f} s, {expected:,} rows as of the target")
    print(f"   baseline: clone of the live primary (pg_basebackup -Fp): {clone_s:.2f} s")
    print(f"   ratio fork/clone {result.duration_s / clone_s:.2f}")
    print("   fork phases (s since start): " + "; ".join(
        f"{t:.1f} {msg}" for t, msg in phases if not msg.startswith("replaying")))


if __name__ == "__main__":
    try:
        main()
    finally:
        LocalCluster(home).destroy()
        shutil.rmtree(home, ignore_errors=True)
