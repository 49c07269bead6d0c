"""Benchmark: what the agent's activity sampling costs the primary, and what its history
stores per day at 200 connections.

One run, one throwaway local cluster (max_connections raised to 260), baselines in the same
run:

1. Throughput: one pgbench run (TPC-B-like, ``-c CLIENTS -j 2 -M prepared -P 1``) on its own
   database, cut into 2 × ROUNDS + 1 blocks of BLOCK_S seconds: sampling every 1 s
   (``ops.history.take_sample`` as the ops role, as the agent runs it, but 10× as often as its
   default) in every other block, off in the rest. Each "on" block's throughput is compared
   with the "off" blocks on either side of it (the shared machine's slower swings cancel out;
   separate runs of 10 s differed by ±50% here). Printed: each pair, the median on/off ratio
   and the cost in %.
2. The sampler's CPU: its server backend's CPU time (from /proc, we run as root) and this
   process's CPU per sample, as a share of one core at 1 s and at the default 10 s.
3. Storage at 200 connections: 200 open client connections (idle, busy, idle in transaction,
   and a blocking chain), SAMPLES samples; bytes per snapshot from the tables' growth, then per
   day at the default 10 s. Two shapes: a typical one (~35 sessions doing something) and the
   worst case (all 200 active).

Everything shares this machine's cores (pgbench client included): read the ratios.

Run: scripts/uv run python bench/agent_sampling.py [BLOCK_S] [ROUNDS] [CLIENTS]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

home = bench_home()

import psycopg  # noqa: E402

from studyhub.local import LocalCluster  # noqa: E402
from studyhub.ops import history, migrate  # noqa: E402
from tests.conftest import connect_as  # noqa: E402

os.environ["STUDYHUB_HOME"] = str(home)  # tests.conftest clears STUDYHUB_* on import

BLOCK_S = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
CLIENTS = int(sys.argv[3]) if len(sys.argv) > 3 else 8
SAMPLES = 60
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class Sampler:
    """take_sample every ``every_s`` on one ops-role connection, in a thread."""

    def __init__(self, profile, every_s: float) -> None:
        self.conn = connect_as(profile, "ops", "studyhub", application_name="studyhub agent")
        self.backend = self.conn.info.backend_pid
        self.every_s, self.samples, self.client_cpu_s = every_s, 0, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.thread_time()
            history.take_sample(self.conn)
            self.client_cpu_s += time.thread_time() - t0
            self.samples += 1
            next_at += self.every_s
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "Sampler":
        self.server_cpu0 = proc_cpu_s(self.backend)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        self.server_cpu_s = proc_cpu_s(self.backend) - self.server_cpu0
        self.conn.close()


def pgbench(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([PGBENCH, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout


class ToggledSampler(Sampler):
    """Samples every second during "on" blocks of BLOCK_S seconds and not at all during the
    "off" blocks between them (block 0 off, 1 on, 2 off, ...), counted from ``t0`` (epoch)."""

    def __init__(self, profile, t0: float) -> None:
        super().__init__(profile, 1.0)
        self.t0 = t0

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            if int((now - self.t0) // BLOCK_S) % 2 == 1:
                t0 = time.thread_time()
                history.take_sample(self.conn)
                self.client_cpu_s += time.thread_time() - t0
                self.samples += 1
            self.stop.wait(1.0 - (time.time() - self.t0) % 1.0)


def throughput(profile, env) -> tuple[list[float], Sampler, int]:
    """One pgbench run of ROUNDS × 2 blocks; per-second throughput from ``-P 1``; each "on"
    block compared with the mean of the "off" blocks on either side of it, so that the
    machine's slower drifts (other work on the shared cores) cancel out."""
    blocks = 2 * ROUNDS + 1
    t0 = time.time() + 0.5
    with ToggledSampler(profile, t0) as sampler:
        out = subprocess.run(
            [PGBENCH, "-c", str(CLIENTS), "-j", "2", "-M", "prepared", "-T",
             str(int(blocks * BLOCK_S + 1)), "-P", "1", "--progress-timestamp", "-n", "bench"],
            env=env, capture_output=True, text=True, check=True)
    per_block: dict[int, list[float]] = {}
    for ts, tps in re.findall(r"progress: ([\d.]+) s, ([\d.]+) tps", out.stderr):
        end = float(ts) - t0
        first, last = int((end - 1) // BLOCK_S), int(end // BLOCK_S)
        if first == last and 0 <= first < blocks:  # seconds wholly inside one block
            per_block.setdefault(first, []).append(float(tps))
    mean = {b: statistics.fmean(v) for b, v in per_block.items() if v}
    ratios = []
    for b in range(1, blocks, 2):
        if b in mean and b - 1 in mean and b + 1 in mean:
            off = (mean[b - 1] + mean[b + 1]) / 2
            ratios.append(mean[b] / off)
            print(f"  block {b // 2 + 1}: on (1 s) {mean[b]:8.1f} tps   off around it "
                  f"{off:8.1f} tps   on/off {mean[b] / off:.3f}", flush=True)
    return ratios, sampler, len(mean)


def history_bytes(profile) -> int:
    with connect_as(profile, "admin", "studyhub") as c:
        return c.execute("SELECT pg_total_relation_size('ops.activity_snapshots') + "
                         "pg_total_relation_size('ops.activity_samples') + "
                         "pg_total_relation_size('ops.statement_fingerprints')").fetchone()[0]


def open_200(profile, all_active: bool) -> list[psycopg.Connection]:
    """200 client connections of the bench database: idle ones, busy ones, idle in
    transaction, a blocking chain (one holder, nine waiters); or all 200 active."""
    conns, threads = [], []

    def run(conn, sql):
        try:
            conn.execute(sql)
        except psycopg.Error:
            pass

    holder = connect_as(profile, "admin", "bench", autocommit=False)
    holder.execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
    conns.append(holder)
    for i in range(199):
        c = connect_as(profile, "admin", "bench", application_name=f"app-{i % 7}")
        conns.append(c)
        if all_active or i < 20:
            sql = f"SELECT pg_sleep(600) /* worker {i % 5} */"
        elif i < 29:
            sql = "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1"
        elif i < 34:
            c.autocommit = False
            c.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i,))
            continue
        else:
            continue
        t = threading.Thread(target=run, args=(c, sql), daemon=True)
        t.start()
        threads.append(t)
    time.sleep(1.0)
    return conns


def storage(profile, all_active: bool) -> dict[str, float]:
    with connect_as(profile, "admin", "studyhub") as c:
        c.execute("TRUNCATE ops.activity_snapshots, ops.activity_samples, "
                  "ops.statement_fingerprints")
    conns = open_200(profile, all_active)
    try:
        before = history_bytes(profile)
        base = datetime.now(timezone.utc) - timedelta(days=1)
        with connect_as(profile, "ops", "studyhub") as conn:
            results = [history.take_sample(conn, now=base + timedelta(seconds=10 * i))
                       for i in range(SAMPLES)]
        grown = history_bytes(profile) - before
    finally:
        for c in conns:
            try:
                c.cancel()
                c.close()
            except psycopg.Error:
                pass
    per_snapshot = grown / SAMPLES
    return {"connections": results[-1].sessions + 1, "sampled": results[-1].sampled,
            "waiting": results[-1].waiting, "bytes_per_snapshot": per_snapshot,
            "mib_per_day_10s": per_snapshot * 8640 / 2**20,
            "mib_per_day_1s": per_snapshot * 86400 / 2**20}


def main() -> None:
    cluster = LocalCluster(home)
    print(f"cluster under {home}", flush=True)
    cluster.up()
    profile = cluster.profile()
    migrate.upgrade(profile)
    with connect_as(profile, "admin", "postgres") as c:
        c.execute("ALTER SYSTEM SET max_connections = 260")
    cluster.stop_node("primary")
    cluster.start_node("primary")
    cluster.create_database("bench")
    admin = profile.endpoint("admin", "bench").conninfo()
    env = {**os.environ, "PGHOST": admin["host"], "PGPORT": str(admin["port"]),
           "PGUSER": admin["user"], "PGPASSFILE": admin["passfile"],
           "PGSSLMODE": admin["sslmode"]}
    pgbench(env, "-i", "-s", "10", "-q", "bench")
    pgbench(env, "-c", str(CLIENTS), "-j", "2", "-T", "5", "-n", "bench")  # warm up
    try:
        print(f"1. throughput: one pgbench -c {CLIENTS} run, {2 * ROUNDS + 1} blocks of "
              f"{BLOCK_S} s, sampling every 1 s in every other block", flush=True)
        ratios, s, nblocks = throughput(profile, env)
        med = statistics.median(ratios)
        print(f"   median on/off {med:.3f}  →  cost {100 * (1 - med):+.2f}% over {len(ratios)} "
              f"on blocks (min ratio {min(ratios):.3f}, max {max(ratios):.3f})")
        n, server, client = s.samples, s.server_cpu_s, s.client_cpu_s
        print(f"2. sampler CPU under load ({n} samples): server backend "
              f"{1000 * server / n:.2f} ms/sample, this process {1000 * client / n:.2f} "
              f"ms/sample  →  {100 * (server + client) / n:.2f}% of one core at 1 s, "
              f"{10 * (server + client) / n:.3f}% at 10 s")
        for all_active in (False, True):
            st = storage(profile, all_active)
            shape = "all active (worst case)" if all_active else "typical"
            print(f"3. storage at {st['connections']} connections, {shape}: {st['sampled']} "
                  f"sessions sampled ({st['waiting']} waiting)  →  "
                  f"{st['bytes_per_snapshot'] / 1024:.1f} KiB/snapshot, "
                  f"{st['mib_per_day_10s']:.0f} MiB/day at 10 s "
                  f"({st['mib_per_day_1s']:.0f} MiB/day at 1 s)")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
