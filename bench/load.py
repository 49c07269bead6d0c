"""Load test of the StudyHub API: several API workers, direct vs PgBouncer vs PgBouncer + replica.

The case the pooler exists for: app workers each sized for their own share of the traffic, whose
direct pools together exceed the primary's max_connections. Four setups, measured in one run,
the same workers (``studyhub serve --workers 4 --pool-size 40`` by default) in each:

1. **direct**: every worker's pool on the primary (4 × 40 > max_connections 100);
2. **pooler**: the same pools through PgBouncer in transaction mode, which holds a few dozen
   server connections (default_pool_size 20 + reserve 5);
3. **pooler + replica reads**: writes as in 2, reads on the streaming replica while its lag is in
   bounds (reader pools ``--replica-pool-size`` per worker, within the replica's own limit);
4. **direct, pools cut to fit**: the other way out, without a pooler: every worker's pool cut
   until they all fit max_connections (4 × 23 + 4 probes ≤ 97).

A throwaway local cluster (primary + replica + PgBouncer) is created under a temporary
``STUDYHUB_HOME``, migrated and seeded with the project's seeder (``studyhub.ops.seed``). The
load client is this process: ``--clients`` concurrent students, each on its own keep-alive
HTTP/1.1 connection, written on raw asyncio streams (uvloop when installed) because httpx cost
more CPU per request than the API itself on a 2-core machine; like a mobile client, it echoes
the API's read mark (``X-StudyHub-Read-After``) after its writes. Mix: mostly the due queue and
reviews, some note reads and writes. Printed per setup: requests/s, p50/p95/p99 latency, errors
by kind (as clients saw them, the causes the API logged, and connections PostgreSQL refused),
the most server connections seen on the primary and the replica, where reads went, and CPU
milliseconds per request for the API, the databases and the load client.

Everything shares this machine's cores: compare the setups with each other (ratios against the
first), and read the CPU table, which does not depend on what else runs here.

    uv run python bench/load.py [--duration 15] [--rounds 2] [--clients 200] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from studyhub.api.auth import TokenService  # noqa: E402
from studyhub.api.read_marks import MARK_HEADER  # noqa: E402
from studyhub.local import LocalCluster  # noqa: E402
from studyhub.ops import migrate  # noqa: E402
from studyhub.ops.seed import seed_database  # noqa: E402


@dataclass(frozen=True)
class Setup:
    name: str
    pooler: bool
    replica: bool
    fit_pools: bool = False  # pools cut so that workers × (pool + probe) fit max_connections


SETUPS = [
    Setup("direct", pooler=False, replica=False),
    Setup("pooler", pooler=True, replica=False),
    Setup("pooler + replica reads", pooler=True, replica=True),
    # The other way out, without a pooler: shrink every worker's pool until they all fit.
    Setup("direct, pools cut to fit", pooler=False, replica=False, fit_pools=True),
]
MAX_CONNECTIONS, SUPERUSER_RESERVED = 100, 3  # the local cluster's settings


def fitting_pool_size(workers: int) -> int:
    """The largest pool per worker with workers × (pool + 1 probe) within the server's limit."""
    return (MAX_CONNECTIONS - SUPERUSER_RESERVED) // workers - 1

# The mix: (weight, action). Mostly the review loop, some notes.
MIX = [
    (45, "due"),
    (25, "review"),
    (10, "list_notes"),
    (5, "get_note"),
    (10, "create_note"),
    (5, "edit_note"),
]
REFUSED = re.compile(r"too many clients already|remaining connection slots are reserved")
ROUTED = re.compile(r"reads routed by this worker: replicas=(\d+) \(.*?\) primary=(\d+) "
                    r"\(read_your_writes=(\d+) failed_on_replica=(\d+)\)")


@dataclass
class Student:
    token: str
    subject_id: str
    note_ids: list[str] = field(default_factory=list)
    due_ids: list[str] = field(default_factory=list)
    mark: str | None = None  # the last read mark the API gave us, echoed on every request


@dataclass
class Result:
    setup: str
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)  # as the clients saw them
    api_causes: dict[str, int] = field(default_factory=dict)  # "database unavailable: ..." logged
    refused_primary: int = 0  # connections PostgreSQL refused (too many clients), whole run
    refused_replica: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    max_primary_connections: int = 0
    max_replica_connections: int = 0
    reads: dict[str, int] = field(default_factory=dict)  # X-StudyHub-Read-From → count
    # Summed from the workers' shutdown lines (whole run): replica, primary, read_your_writes,
    # failed_on_replica.
    routing: dict[str, int] = field(default_factory=dict)
    all_requests: int = 0  # warm-up included: the denominator of CPU per request
    api_cpu_s: float = 0.0
    db_cpu_s: float = 0.0  # primary + replica + PgBouncer processes
    client_cpu_s: float = 0.0
    load_average: list[float] = field(default_factory=list)

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))]

    def merge(self, other: Result) -> None:
        for name in ("requests", "errors", "refused_primary", "refused_replica", "duration_s",
                     "all_requests", "api_cpu_s", "db_cpu_s", "client_cpu_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.error_kinds, other.error_kinds),
                             (self.api_causes, other.api_causes), (self.reads, other.reads),
                             (self.routing, other.routing)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.latencies_ms += other.latencies_ms
        self.max_primary_connections = max(self.max_primary_connections,
                                           other.max_primary_connections)
        self.max_replica_connections = max(self.max_replica_connections,
                                           other.max_replica_connections)
        self.load_average += other.load_average

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok_rps(self) -> float:
        """Requests served without error, per second."""
        return (self.requests - self.errors) / self.duration_s if self.duration_s else 0.0


def count(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


# ------------------------------------------------------------------------------ data
def pick_students(cluster: LocalCluster, n: int, secret: str) -> list[tuple[str, str]]:
    """(token, a subject id) for the n students with the most cards due now."""
    tokens = TokenService(secret, 3 * 3600)
    with cluster.admin_connect("studyhub") as conn:
        rows = conn.execute("""
            SELECT s.id, s.user_id, min(f.subject_id::text)
            FROM students s JOIN flashcards f ON f.student_id = s.id AND f.due <= now()
            GROUP BY s.id, s.user_id ORDER BY count(*) DESC, s.id LIMIT %s""", (n,)).fetchall()
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} students have due cards; seed more (--students)")
    return [(tokens.issue(uid, sid), subj) for sid, uid, subj in rows]


# ------------------------------------------------------------------------------- CPU
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the API's supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def database_pids(cluster: LocalCluster) -> list[int]:
    """Every process of the cluster: postmasters and backends (cwd = a data directory) and
    PgBouncer."""
    dirs = {cluster.primary_dir.resolve(), cluster.replica_dir.resolve()}
    node_dir = getattr(cluster, "replica_node_dir", None)  # more replicas (local up --replicas)
    if node_dir is not None:
        dirs |= {node_dir(name).resolve() for name in cluster.load_state().replica_names()}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) in dirs:
                    pids.append(int(entry.name))
            except OSError:
                pass
    pooler = cluster.pooler_pid()
    return pids + ([pooler] if pooler else [])


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    return {pid: process_cpu_s(pid) for pid in pids}


def cpu_used(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds since ``before`` of ``pids`` (processes started since count in full)."""
    return sum(process_cpu_s(pid) - before.get(pid, 0.0) for pid in pids)


# ---------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status, r.read()


def start_server(home: Path, secret: str, setup: Setup, args: argparse.Namespace,
                 log: Path, extra_env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STUDYHUB_"))}
    env.update(STUDYHUB_HOME=str(home), STUDYHUB_API_SECRET=secret,  # environment, not argv
               STUDYHUB_API_REPLICA_POOL_SIZE=str(args.replica_pool_size), **(extra_env or {}))
    flags = ["--pooler" if setup.pooler else "--no-pooler",
             "--replica" if setup.replica else "--no-replica",
             "--workers", str(args.workers), "--pool-size",
             str(fitting_pool_size(args.workers) if setup.fit_pools else args.pool_size)]
    log.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "studyhub.cli.main", "serve", "--port", str(port), *flags],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # every worker up, not just the first
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with {proc.returncode}; see {log}")
        if log.read_text(errors="replace").count("Application startup complete") >= args.workers:
            try:
                if http_get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    return proc, port
            except OSError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the API did not start {args.workers} workers within 90 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class ConnectionSampler(threading.Thread):
    """The most client backends of the app role on the primary and on the replica at once
    (sampled every 0.25 s, as the superuser: its reserved slots, no competition)."""

    QUERY = ("SELECT count(*) FROM pg_stat_activity WHERE datname = 'studyhub' "
             "AND backend_type = 'client backend' AND usename = 'studyhub_app'")

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.max_primary = 0
        self.max_replica = 0
        self.stop = threading.Event()

    def run(self) -> None:
        replica_port = self.cluster.load_state().replica_port
        with self.cluster.admin_connect("studyhub") as primary, \
                self.cluster.admin_connect("studyhub", port=replica_port) as replica:
            while not self.stop.is_set():
                self.max_primary = max(self.max_primary,
                                       primary.execute(self.QUERY).fetchone()[0])
                self.max_replica = max(self.max_replica,
                                       replica.execute(self.QUERY).fetchone()[0])
                self.stop.wait(0.25)


class LogTail:
    """The lines a log file gains from now on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace").splitlines()


# ------------------------------------------------------------------------ HTTP client
class Transport(Exception):
    pass


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: just enough protocol for the API's answers (they
    always carry Content-Length), and cheap in CPU."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: str,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: api\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(head + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0][9:12])
            found: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                found[name.lower()] = value.strip()
            data = await self.reader.readexactly(int(found.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            self.close()
            raise Transport(type(exc).__name__) from None
        if found.get("connection") == "close":
            self.close()
        return status, found, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(port: int, students: list[Student], warmup_s: float, duration_s: float,
                result: Result) -> None:
    weights = [w for w, _ in MIX]
    actions = [a for _, a in MIX]
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    end = measure_from + duration_s
    read_header = "x-studyhub-read-from"
    mark_header = MARK_HEADER.lower()

    async def student_loop(st: Student, rng: random.Random) -> None:
        conn = HttpConnection(port)
        auth = f"Authorization: Bearer {st.token}\r\n"

        async def request(method: str, path: str, payload: object = None) -> object | None:
            headers = auth + (f"{MARK_HEADER}: {st.mark}\r\n" if st.mark else "")
            body = b""
            if payload is not None:
                body = json.dumps(payload).encode()
                headers += "Content-Type: application/json\r\n"
            started = loop.time()
            try:
                status, found, data = await conn.request(method, path, headers, body)
            except Transport as exc:
                status, found, data, problem = 0, {}, b"", f"transport: {exc}"
            else:
                problem = None
                if status >= 400:
                    try:
                        detail = json.loads(data).get("detail", "")
                    except ValueError:
                        detail = data[:40].decode(errors="replace")
                    problem = f"HTTP {status} {detail}"[:70]
            finished = loop.time()
            result.all_requests += 1
            if mark_header in found:
                st.mark = found[mark_header]
            if measure_from <= finished <= end:  # completions inside the measured window
                result.requests += 1
                if problem:
                    result.errors += 1
                    count(result.error_kinds, problem)
                else:  # latency of served requests; errors are counted apart
                    result.latencies_ms.append((finished - started) * 1000)
                    if read_header in found:
                        count(result.reads, found[read_header])
            if problem:
                return None
            return json.loads(data) if data else {}

        try:
            while loop.time() < end:
                action = rng.choices(actions, weights)[0]
                if action == "review" and not st.due_ids:
                    action = "due"
                if action in ("get_note", "edit_note") and not st.note_ids:
                    action = "list_notes"
                if action == "due":
                    cards = await request("GET", "/flashcards/due?limit=20")
                    if cards is not None:
                        st.due_ids = [c["id"] for c in cards]  # type: ignore[union-attr]
                elif action == "review":
                    await request("POST", f"/flashcards/{st.due_ids.pop(0)}/reviews", {
                        "rating": rng.choices([1, 2, 3, 4], [10, 15, 60, 15])[0],
                        "review_duration_ms": rng.randint(2000, 15000)})
                elif action == "list_notes":
                    page = await request("GET", "/notes?limit=20")
                    if page is not None:
                        st.note_ids = [n["id"] for n in page["items"]] or st.note_ids  # type: ignore[index]
                elif action == "get_note":
                    await request("GET", f"/notes/{rng.choice(st.note_ids)}")
                elif action == "create_note":
                    note = await request("POST", "/notes", {
                        "subject_id": st.subject_id,
                        "title": f"Bench note {uuid.uuid4().hex[:8]}",
                        "body": "Revision notes. " * rng.randint(5, 60)})
                    if note is not None:
                        st.note_ids.insert(0, note["id"])  # type: ignore[index]
                elif action == "edit_note":
                    await request("PATCH", f"/notes/{rng.choice(st.note_ids)}",
                                  {"body": "Edited. " * rng.randint(5, 60)})
        finally:
            conn.close()

    await asyncio.gather(*(student_loop(st, random.Random(i)) for i, st in enumerate(students)))
    result.duration_s = duration_s


def run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def run_setup(setup: Setup, cluster: LocalCluster, home: Path, secret: str,
              picked: list[tuple[str, str]], args: argparse.Namespace) -> Result:
    log = home / f"api-{setup.name.replace(' ', '_').replace('+', 'and')}.log"
    # A fresh PgBouncer for each setup, so server connections it holds from the previous one
    # are not counted against the next.
    cluster.stop_pooler()
    cluster.start_pooler()
    primary_log = LogTail(cluster.logs_dir / "primary.log")
    replica_log = LogTail(cluster.logs_dir / "replica.log")
    proc, port = start_server(home, secret, setup, args, log)
    api_log = LogTail(log)
    result = Result(setup.name)
    sampler = ConnectionSampler(cluster)
    try:
        sampler.start()
        students = [Student(token, subject) for token, subject in picked]
        api_pids = process_tree(proc.pid)
        api_before, db_before = cpu_snapshot(api_pids), cpu_snapshot(database_pids(cluster))
        client_before = time.process_time()
        run_loop(drive(port, students, args.warmup, args.duration, result))
        result.client_cpu_s = time.process_time() - client_before
        result.api_cpu_s = cpu_used(api_before, process_tree(proc.pid))
        result.db_cpu_s = cpu_used(db_before, database_pids(cluster))
    finally:
        sampler.stop.set()
        sampler.join(5)
        stop_server(proc)
    for line in api_log.new_lines():
        if "database unavailable:" in line:
            count(result.api_causes, line.split("database unavailable:", 1)[1].strip()[:70])
        routed = ROUTED.search(line)
        if routed:
            for name, value in zip(("replica", "primary", "read_your_writes",
                                    "failed_on_replica"), routed.groups()):
                result.routing[name] = result.routing.get(name, 0) + int(value)
    result.refused_primary = sum(bool(REFUSED.search(x)) for x in primary_log.new_lines())
    result.refused_replica = sum(bool(REFUSED.search(x)) for x in replica_log.new_lines())
    result.max_primary_connections = sampler.max_primary
    result.max_replica_connections = sampler.max_replica
    result.load_average.append(os.getloadavg()[0])
    return result


# ----------------------------------------------------------------------------- report
def report(results: list[Result], args: argparse.Namespace, seeded: str,
           load_before: tuple[float, float, float]) -> None:
    base = results[0]
    print(f"\nStudyHub API load test: {args.clients} concurrent clients on {args.workers} API "
          f"workers (pool {args.pool_size} per worker, cut to {fitting_pool_size(args.workers)} "
          f"in the last setup; replica reader pool {args.replica_pool_size}); {args.rounds} "
          f"round(s) of {args.duration:g} s per setup after {args.warmup:g} s warm-up; {seeded}")
    print(f"{os.cpu_count()} CPU(s) shared by everything; load average before: "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, now: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    header = (f"{'setup':<23} {'req/s':>6} {'ok/s':>6} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>7} {'errors':>7} {'primary conns':>13} {'replica conns':>13} "
              f"{'reads on replica':>16} {'ok/s vs 1':>9} {'p99 vs 1':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        reads = sum(r.reads.values())
        on_replicas = reads - r.reads.get("primary", 0)
        share = f"{100 * on_replicas / reads:.0f}%" if reads else "-"
        print(f"{r.setup:<23} {r.rps:>6.0f} {r.ok_rps:>6.0f} {r.pct(50):>7.1f} "
              f"{r.pct(95):>7.1f} {r.pct(99):>7.1f} {r.errors:>7} "
              f"{r.max_primary_connections:>13} {r.max_replica_connections:>13} {share:>16} "
              f"{r.ok_rps / base.ok_rps:>8.2f}x {r.pct(99) / base.pct(99):>7.2f}x")
    print("\nErrors, by kind (measured window) — and what caused them (whole run):")
    for r in results:
        if not (r.errors or r.api_causes or r.refused_primary or r.refused_replica):
            print(f"  {r.setup}: none")
            continue
        print(f"  {r.setup}: {r.errors} of {r.requests} requests "
              f"({100 * r.errors / max(r.requests, 1):.1f}%)")
        for kind, n in sorted(r.error_kinds.items(), key=lambda kv: -kv[1]):
            print(f"    clients saw  {n:>6} × {kind}")
        for cause, n in sorted(r.api_causes.items(), key=lambda kv: -kv[1]):
            print(f"    API logged   {n:>6} × database unavailable: {cause}")
        if r.refused_primary or r.refused_replica:
            print(f"    PostgreSQL refused {r.refused_primary} connection(s) on the primary and "
                  f"{r.refused_replica} on the replica (too many clients)")
    for r in results:
        routed = r.routing
        if routed.get("primary"):
            other = routed["primary"] - routed["read_your_writes"] - routed["failed_on_replica"]
            print(f"\nReads on the primary in '{r.setup}' (all workers, warm-up included): "
                  f"{routed['primary']} of {routed['primary'] + routed['replica']}: "
                  f"{routed['read_your_writes']} kept there for read-your-writes (the student's "
                  f"own write not yet replayed), {routed['failed_on_replica']} failed on the "
                  f"replica and retried, {other} while the replica lagged beyond the bound or "
                  f"was not measured recently.")
    print("\nCPU per request (ms; warm-up included), independent of what else runs here:")
    print(f"{'setup':<23} {'API':>6} {'database+pooler':>16} {'load client':>12} {'total':>7}")
    for r in results:
        n = max(r.all_requests, 1)
        api, db, client = (1000 * x / n for x in (r.api_cpu_s, r.db_cpu_s, r.client_cpu_s))
        print(f"{r.setup:<23} {api:>6.2f} {db:>16.2f} {client:>12.2f} {api + db + client:>7.2f}")
    print("\nload average (1 min) after each round: " + "; ".join(
        f"{r.setup}: {', '.join(f'{x:.1f}' for x in r.load_average)}" for r in results))
    print("\nreq/s: every completed request; ok/s: those served without error; latency "
          "percentiles: of the served requests (errors are counted apart).")
    print("conns: the most backends of the app role at once (sampled every 0.25 s); "
          "max_connections = 100 on each server (3 reserved for superusers); PgBouncer: "
          "default_pool_size 20, reserve 5, max_db_connections 60. Reads on replica: share of "
          "successful reads answered by the replica (X-StudyHub-Read-From).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="measured seconds per setup and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the setups")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=200, help="concurrent students")
    parser.add_argument("--workers", type=int, default=4, help="API worker processes")
    parser.add_argument("--pool-size", type=int, default=40,
                        help="writer pool per worker (direct or to PgBouncer)")
    parser.add_argument("--replica-pool-size", type=int, default=20,
                        help="reader pool per worker on the replica")
    parser.add_argument("--students", type=int, default=1000, help="students to seed")
    parser.add_argument("--keep", action="store_true", help="keep the cluster and logs")
    parser.add_argument("--replicas", action="store_true",
                        help="instead: read throughput with 0, 1 and 2 replicas, then the fault "
                             "phases (bench/load_replicas.py)")
    parser.add_argument("--fault-clients", type=int, default=50,
                        help="--replicas: concurrent students in the fault phases")
    parser.add_argument("--phase", type=float, default=8.0,
                        help="--replicas: seconds per fault phase")
    parser.add_argument("--max-stale", type=float, default=5.0,
                        help="--replicas: the API's max_stale_read_s in the fault phases")
    args = parser.parse_args()
    if args.replicas:
        from load_replicas import run_replicas  # bench/load_replicas.py

        run_replicas(args)
        return

    load_before = os.getloadavg()
    home = bench_home()
    cluster = LocalCluster(home)
    try:
        print(f"cluster under {home}: primary + replica + PgBouncer", flush=True)
        cluster.up(replica=True, pooler=True)
        migrate.upgrade(cluster.profile())
        seeded = seed_database(cluster.profile(), students=args.students)
        print(f"seeded {seeded.students} students, {seeded.total_rows:,} rows in "
              f"{seeded.duration_s:.1f} s", flush=True)
        secret = secrets.token_urlsafe(48)
        picked = pick_students(cluster, args.clients, secret)
        # Rounds interleave the setups, so a burst of other work on the machine does not
        # land on one setup only.
        results = {s.name: Result(s.name) for s in SETUPS}
        for round_no in range(1, args.rounds + 1):
            for setup in SETUPS:
                print(f"round {round_no}/{args.rounds}: {setup.name} ...", flush=True)
                results[setup.name].merge(run_setup(setup, cluster, home, secret, picked, args))
        report(list(results.values()), args,
               f"data: studyhub.ops.seed, {seeded.students} students, {seeded.total_rows:,} rows",
               load_before)
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
