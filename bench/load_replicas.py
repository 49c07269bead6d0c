"""``bench/load.py --replicas``: read throughput with 0, 1 and 2 streaming replicas, then faults.

A throwaway local cluster with two streaming replicas (``local up --replicas 2``), migrated and
seeded. The API runs ``--workers`` processes, writes straight to the primary with the pools cut
to fit max_connections (no PgBouncer: fewer moving parts when the primary is stopped), reads
from the replicas named by ``STUDYHUB_API_READ_ENDPOINTS``.

1. **Scaling**: the usual mix (bench/load.py) with 0, 1 and 2 replicas, rounds interleaved:
   requests/s, p50/p99, where reads went, CPU per request of the API and of the databases.
2. **Faults**: one API with both replicas, ``--fault-clients`` students that write a note (create
   or edit) and read it straight back, read their notes and the due queue, echoing the read
   mark. Phases of ``--phase`` seconds: steady; replica2 stopped (fast shutdown); replica2 back
   and replay paused on replica (``pg_wal_replay_pause()``); replay resumed and the primary
   stopped; the primary back. Per phase: requests answered vs failed, where reads went, reads
   served stale while the primary was down and the largest X-StudyHub-Stale-Seconds seen (the
   bound is ``--max-stale``), and read-your-writes violations found by the client: a read of a
   note this student wrote that misses it (404) or shows an older body than the student's last
   acknowledged write.

Everything shares this machine's cores (2 here): the replicas do not add CPU, they take it from
the primary and the API. Read the CPU-per-request table, not only requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common import bench_home  # bench/common.py
from load import (
    MARK_HEADER,
    HttpConnection,
    LocalCluster,
    Result,
    Setup,
    Student,
    Transport,
    count,
    cpu_snapshot,
    cpu_used,
    database_pids,
    drive,
    migrate,
    pick_students,
    process_tree,
    run_loop,
    seed_database,
    start_server,
    stop_server,
)

SCALING = [
    (Setup("0 replicas", pooler=False, replica=False, fit_pools=True), None),
    (Setup("1 replica", pooler=False, replica=True, fit_pools=True), "replica"),
    (Setup("2 replicas", pooler=False, replica=True, fit_pools=True), "replica,replica2"),
]
PHASES = ["steady", "replica2 stopped", "replay paused on replica", "primary stopped",
          "primary back"]


# ---------------------------------------------------------------------------- scaling
def node_pids(cluster: LocalCluster) -> dict[str, list[int]]:
    """The processes of each server (postmaster and backends: cwd = its data directory)."""
    dirs = {cluster.primary_dir.resolve(): "primary"}
    for name in cluster.load_state().replica_names():
        dirs[cluster.replica_node_dir(name).resolve()] = name  # type: ignore[attr-defined]
    found: dict[str, list[int]] = {name: [] for name in dirs.values()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                node = dirs.get(Path(os.readlink(entry / "cwd")))
            except OSError:
                continue
            if node:
                found[node].append(int(entry.name))
    return found


def run_scaling_setup(setup: Setup, endpoints: str | None, cluster: LocalCluster, home: Path,
                      secret: str, picked: list[tuple[str, str]],
                      args: argparse.Namespace) -> Result:
    log = home / f"api-{setup.name.replace(' ', '_')}.log"
    env = {"STUDYHUB_API_READ_ENDPOINTS": endpoints} if endpoints else {}
    proc, port = start_server(home, secret, setup, args, log, env)
    result = Result(setup.name)
    try:
        students = [Student(token, subject) for token, subject in picked]
        api_pids = process_tree(proc.pid)
        api_before, db_before = cpu_snapshot(api_pids), cpu_snapshot(database_pids(cluster))
        nodes_before = {n: cpu_snapshot(p) for n, p in node_pids(cluster).items()}
        client_before = time.process_time()
        run_loop(drive(port, students, args.warmup, args.duration, result))
        result.client_cpu_s = time.process_time() - client_before
        result.api_cpu_s = cpu_used(api_before, process_tree(proc.pid))
        result.db_cpu_s = cpu_used(db_before, database_pids(cluster))
        for n, pids in node_pids(cluster).items():
            result.routing[f"cpu_ms:{n}"] = int(1000 * cpu_used(nodes_before.get(n, {}), pids))
    finally:
        stop_server(proc)
    result.load_average.append(os.getloadavg()[0])
    return result


def report_scaling(results: list[Result], args: argparse.Namespace) -> None:
    base = results[0]
    print(f"\nRead scaling: {args.clients} clients, {args.workers} API workers, writes direct "
          f"to the primary; {args.rounds} round(s) of {args.duration:g} s per setup; "
          f"{os.cpu_count()} CPU(s) shared by the primary, the replicas, the API and the client")
    header = (f"{'setup':<11} {'req/s':>6} {'ok/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'ok/s vs 0':>9} {'p99 vs 0':>8}  reads by node")
    print(header)
    print("-" * (len(header) + 30))
    for r in results:
        reads = sum(r.reads.values()) or 1
        by_node = ", ".join(f"{k} {100 * v / reads:.0f}%" for k, v in sorted(r.reads.items()))
        print(f"{r.setup:<11} {r.rps:>6.0f} {r.ok_rps:>6.0f} {r.pct(50):>7.1f} "
              f"{r.pct(99):>7.1f} {r.errors:>6} {r.ok_rps / base.ok_rps:>8.2f}x "
              f"{r.pct(99) / base.pct(99):>7.2f}x  {by_node}")
    print("\nCPU per request (ms, warm-up included):")
    print(f"{'setup':<11} {'API':>6} {'databases':>10} {'client':>7}  by server")
    for r in results:
        n = max(r.all_requests, 1)
        by_server = ", ".join(f"{k.split(':', 1)[1]} {v / n:.2f}"
                              for k, v in sorted(r.routing.items()) if k.startswith("cpu_ms:"))
        print(f"{r.setup:<11} {1000 * r.api_cpu_s / n:>6.2f} {1000 * r.db_cpu_s / n:>10.2f} "
              f"{1000 * r.client_cpu_s / n:>7.2f}  {by_server}")
    for r in results:
        if r.error_kinds:
            print(f"  errors in {r.setup}: " + "; ".join(
                f"{n} × {k}" for k, n in sorted(r.error_kinds.items(), key=lambda kv: -kv[1])))


# ----------------------------------------------------------------------------- faults
@dataclass
class Phase:
    name: str
    answered: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    reads_by_node: dict[str, int] = field(default_factory=dict)
    writes_ok: int = 0
    writes_failed: int = 0
    stale_reads: int = 0
    max_stale_s: float = 0.0
    ryw_checks: int = 0
    ryw_violations: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def p99(self) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(round(0.99 * (len(data) - 1))))]


@dataclass
class FaultStudent:
    token: str
    subject_id: str
    mark: str | None = None
    # note id → the bodies a read may show: the last acknowledged write's, plus any attempted
    # since whose outcome is unknown (the request failed: it may or may not have committed)
    notes: dict[str, set[str]] = field(default_factory=dict)


async def drive_faults(port: int, students: list[FaultStudent], phases: list[Phase],
                       current: list[int], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    async def student_loop(st: FaultStudent, rng: random.Random) -> None:
        conn = HttpConnection(port)

        async def request(method: str, path: str, payload: object = None
                          ) -> tuple[int, dict[str, str], object | None]:
            headers = f"Authorization: Bearer {st.token}\r\n" + (
                f"{MARK_HEADER}: {st.mark}\r\n" if st.mark else "")
            body = b""
            if payload is not None:
                body = json.dumps(payload).encode()
                headers += "Content-Type: application/json\r\n"
            phase = phases[current[0]]
            started = loop.time()
            try:
                status, found, data = await conn.request(method, path, headers, body)
            except Transport as exc:
                count(phase.failed, f"transport {exc}")
                return 0, {}, None
            if MARK_HEADER.lower() in found:
                st.mark = found[MARK_HEADER.lower()]
            if status < 400 or status == 404:
                phase.answered += 1
                phase.latencies_ms.append((loop.time() - started) * 1000)
            else:
                count(phase.failed, f"HTTP {status}")
            where = found.get("x-studyhub-read-from")
            if where and status < 400:
                count(phase.reads_by_node, where)
            if "x-studyhub-stale-seconds" in found:
                phase.stale_reads += 1
                phase.max_stale_s = max(phase.max_stale_s,
                                        float(found["x-studyhub-stale-seconds"]))
            try:
                parsed = json.loads(data) if data and status < 500 else None
            except ValueError:
                parsed = None
            return status, found, parsed

        async def check(note_id: str) -> None:
            status, _, note = await request("GET", f"/notes/{note_id}")
            if status not in (200, 404):
                return  # not answered: counted as failed, not as a violation
            phase = phases[current[0]]
            phase.ryw_checks += 1
            if status == 404 or note["body"] not in st.notes[note_id]:  # type: ignore[index]
                phase.ryw_violations += 1

        async def write() -> None:
            text = f"Revision {uuid.uuid4().hex[:8]}. " * rng.randint(2, 20)
            if st.notes and rng.random() < 0.5:
                note_id = rng.choice(list(st.notes))
                status, _, _ = await request("PATCH", f"/notes/{note_id}", {"body": text})
                if status == 200:
                    st.notes[note_id] = {text}
                else:
                    st.notes[note_id].add(text)  # may have committed
            else:
                status, _, note = await request("POST", "/notes", {
                    "subject_id": st.subject_id, "title": "fault bench", "body": text})
                note_id = note["id"] if status == 201 else None  # type: ignore[index]
                if note_id:
                    st.notes[note_id] = {text}
            phase = phases[current[0]]
            if status in (200, 201):
                phase.writes_ok += 1
                await check(note_id)  # type: ignore[arg-type]  # read it straight back
            else:
                phase.writes_failed += 1

        try:
            while not stop.is_set():
                r = rng.random()
                if r < 0.25 or not st.notes:
                    await write()
                elif r < 0.6:
                    await check(rng.choice(list(st.notes)))
                else:
                    await request("GET", "/flashcards/due?limit=20")
                await asyncio.sleep(rng.uniform(0.0, 0.02))
        finally:
            conn.close()

    await asyncio.gather(*(student_loop(st, random.Random(i)) for i, st in enumerate(students)))


def run_faults(cluster: LocalCluster, home: Path, secret: str,
               picked: list[tuple[str, str]], args: argparse.Namespace
               ) -> tuple[list[Phase], dict[str, int]]:
    """The phases, and the causes the API logged for its 503s (whole run)."""
    setup = Setup("faults", pooler=False, replica=True, fit_pools=True)
    env = {"STUDYHUB_API_READ_ENDPOINTS": "replica,replica2",
           "STUDYHUB_API_MAX_STALE_READ_S": str(args.max_stale),
           "STUDYHUB_API_REPLICA_PROBE_TIMEOUT_S": "1"}
    proc, port = start_server(home, secret, setup, args, home / "api-faults.log", env)
    phases = [Phase(name) for name in PHASES]
    current = [0]
    replica_port = cluster.load_state().replica_port

    def replay(action: str) -> None:
        with cluster.admin_connect(port=replica_port) as conn:
            conn.execute(f"SELECT pg_wal_replay_{action}()")

    actions = [
        None,
        lambda: cluster.stop_node("replica2"),
        lambda: (cluster.start_node("replica2"), replay("pause")),
        lambda: (replay("resume"), cluster.stop_node("primary")),
        lambda: cluster.start_node("primary"),
    ]

    async def scenario() -> None:
        stop = asyncio.Event()
        students = [FaultStudent(t, s) for t, s in picked[:args.fault_clients]]
        loop = asyncio.get_running_loop()
        runner = asyncio.ensure_future(drive_faults(port, students, phases, current, stop))
        for i, action in enumerate(actions):
            current[0] = i  # requests during the change count for the new phase
            print(f"  phase: {phases[i].name}", flush=True)
            started = loop.time()
            if action is not None:
                await loop.run_in_executor(None, action)
            await asyncio.sleep(max(0.0, args.phase - (loop.time() - started)))
        stop.set()
        await runner

    log_path = home / "api-faults.log"
    causes: dict[str, int] = {}
    try:
        run_loop(scenario())
    finally:
        stop_server(proc)
        for line in log_path.read_text(errors="replace").splitlines():
            if "database unavailable:" in line:
                count(causes, line.split("database unavailable:", 1)[1].strip()[:80])
        for node in ("primary", "replica2"):  # leave the cluster whole
            try:
                cluster.start_node(node)
            except Exception:  # noqa: BLE001 - already running
                pass
    return phases, causes


def report_faults(phases: list[Phase], causes: dict[str, int],
                  args: argparse.Namespace) -> None:
    print(f"\nFaults: {args.fault_clients} clients, each write read straight back; phases of "
          f"{args.phase:g} s; stale reads allowed up to {args.max_stale:g} s "
          f"(max_stale_read_s)")
    header = (f"{'phase':<26} {'answered':>8} {'failed':>6} {'writes ok/failed':>16} "
              f"{'p99 ms':>7} {'stale reads':>11} {'max stale s':>11} {'RYW checks':>10} "
              f"{'violations':>10}  reads by node; failures")
    print(header)
    print("-" * len(header))
    for p in phases:
        failed = sum(p.failed.values())
        nodes = ", ".join(f"{k} {v}" for k, v in sorted(p.reads_by_node.items()))
        kinds = ", ".join(f"{n} × {k}" for k, n in sorted(p.failed.items(), key=lambda kv: -kv[1]))
        print(f"{p.name:<26} {p.answered:>8} {failed:>6} "
              f"{f'{p.writes_ok}/{p.writes_failed}':>16} {p.p99():>7.1f} {p.stale_reads:>11} "
              f"{p.max_stale_s:>11.2f} {p.ryw_checks:>10} {p.ryw_violations:>10}  "
              f"{nodes}; {kinds or 'none'}")
    if causes:
        print("API logged (whole fault run): " + "; ".join(
            f"{n} × {k}" for k, n in sorted(causes.items(), key=lambda kv: -kv[1])[:6]))
    worst = max(p.max_stale_s for p in phases)
    total = sum(p.ryw_violations for p in phases)
    print(f"\nlargest staleness served: {worst:.2f} s (bound {args.max_stale:g} s: "
          f"{'within' if worst <= args.max_stale else 'EXCEEDED'}); read-your-writes "
          f"violations: {total}")


# ------------------------------------------------------------------------------- main
def run_replicas(args: argparse.Namespace) -> None:
    home = bench_home()
    cluster = LocalCluster(home)
    try:
        print(f"cluster under {home}: primary + 2 streaming replicas", flush=True)
        try:
            cluster.up(replicas=2)  # type: ignore[call-arg]  # local up --replicas (issue 18)
        except TypeError:
            raise SystemExit("this checkout's local cluster has no --replicas; "
                             "it needs local up --replicas N") from None
        migrate.upgrade(cluster.profile())
        seeded = seed_database(cluster.profile(), students=args.students)
        print(f"seeded {seeded.students} students, {seeded.total_rows:,} rows", flush=True)
        secret = __import__("secrets").token_urlsafe(48)
        picked = pick_students(cluster, max(args.clients, args.fault_clients), secret)
        results = {s.name: Result(s.name) for s, _ in SCALING}
        for round_no in range(1, args.rounds + 1):
            for setup, endpoints in SCALING:
                print(f"round {round_no}/{args.rounds}: {setup.name} ...", flush=True)
                results[setup.name].merge(run_scaling_setup(
                    setup, endpoints, cluster, home, secret, picked[:args.clients], args))
        print("faults ...", flush=True)
        phases, causes = run_faults(cluster, home, secret, picked, args)
        report_scaling(list(results.values()), args)
        report_faults(phases, causes, args)
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)
