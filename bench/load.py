"""Load test of the StudyHub API in three setups, measured in one run:

1. primary only, direct connections;
2. primary through PgBouncer (transaction pooling);
3. PgBouncer for writes + the streaming replica for reads (lag-aware routing).

A throwaway local cluster (primary + replica + PgBouncer) is created under a temporary
``STUDYHUB_HOME``, migrated and seeded (``studyhub.ops.seed`` when it is there, else a small
built-in seeder). For each setup the API runs as its own process (``studyhub serve``, one uvicorn
worker) and this process drives it with ``--clients`` concurrent students (asyncio + httpx,
keep-alive) for ``--duration`` seconds after a warm-up: mostly due-queue reads and reviews, some
note reads and writes. Printed per setup: requests/s, p50/p95/p99 latency, errors (any non-2xx
or transport error), the most server connections the primary had, where reads went.

Everything shares this machine's cores (client, API, primary, replica, PgBouncer): compare the
setups with each other (ratios against the first), not with numbers from elsewhere.

    uv run python bench/load.py [--duration 20] [--clients 200] [--students 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from studyhub.api.auth import TokenService  # noqa: E402
from studyhub.local.cluster import LocalCluster  # noqa: E402
from studyhub.ops import migrate  # noqa: E402

SETUPS = [
    ("primary direct", ["--no-pooler", "--no-replica"]),
    ("primary + pooler", ["--pooler", "--no-replica"]),
    ("pooler + replica reads", ["--pooler", "--replica"]),
]

# The mix: (weight, action). Mostly the review loop, some notes.
MIX = [
    (45, "due"),
    (25, "review"),
    (10, "list_notes"),
    (5, "get_note"),
    (10, "create_note"),
    (5, "edit_note"),
]


@dataclass
class Student:
    token: str
    subject_id: str
    note_ids: list[str] = field(default_factory=list)
    due_ids: list[str] = field(default_factory=list)


@dataclass
class Result:
    setup: str
    requests: int = 0
    errors: int = 0
    error_samples: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    max_primary_connections: int = 0
    all_requests: int = 0  # warm-up included: the denominator of CPU per request
    api_cpu_s: float = 0.0
    db_cpu_s: float = 0.0  # primary + replica + PgBouncer processes
    client_cpu_s: float = 0.0
    load_average: list[float] = field(default_factory=list)
    reads_on_replica: int = 0
    reads_on_primary: int = 0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))]

    def merge(self, other: "Result") -> None:
        self.requests += other.requests
        self.errors += other.errors
        for k, v in other.error_samples.items():
            self.error_samples[k] = self.error_samples.get(k, 0) + v
        self.latencies_ms += other.latencies_ms
        self.duration_s += other.duration_s
        self.max_primary_connections = max(self.max_primary_connections,
                                           other.max_primary_connections)
        self.reads_on_replica += other.reads_on_replica
        self.reads_on_primary += other.reads_on_primary
        self.all_requests += other.all_requests
        self.api_cpu_s += other.api_cpu_s
        self.db_cpu_s += other.db_cpu_s
        self.client_cpu_s += other.client_cpu_s
        self.load_average += other.load_average

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


# ------------------------------------------------------------------------------ data
def seed(cluster: LocalCluster, students: int) -> str:
    profile = cluster.profile()
    try:
        from studyhub.ops.seed import seed_database  # the project's seeder, when present
    except ImportError:
        builtin_seed(cluster, students)
        return "built-in bench seeder"
    seed_database(profile, students=students)
    return "studyhub.ops.seed"


def builtin_seed(cluster: LocalCluster, students: int) -> None:
    """Enough for the mix: students with subjects, notes and cards due now."""
    with cluster.admin_connect("studyhub") as conn:
        conn.execute("SET ROLE studyhub_app")
        conn.execute("""
            INSERT INTO subjects (code, name)
            SELECT 'S' || g, 'Subject ' || g FROM generate_series(1, 12) g
            ON CONFLICT DO NOTHING""")
        conn.execute("""
            WITH u AS (
                INSERT INTO users (email, password_hash)
                SELECT 'bench' || g || '@example.org', 'not-a-real-hash'
                FROM generate_series(1, %s) g RETURNING id)
            INSERT INTO students (user_id, full_name) SELECT id, 'Bench Student' FROM u""",
                     (students,))
        conn.execute("""
            INSERT INTO student_subjects (student_id, subject_id)
            SELECT s.id, sub.id FROM students s
            CROSS JOIN LATERAL (SELECT id FROM subjects ORDER BY random() LIMIT 3) sub""")
        conn.execute("""
            INSERT INTO notes (student_id, subject_id, title, body)
            SELECT ss.student_id, ss.subject_id, 'Note ' || g, repeat('Some revision text. ', 40)
            FROM student_subjects ss, generate_series(1, 4) g""")
        conn.execute("""
            INSERT INTO flashcards (student_id, subject_id, front, back, due)
            SELECT ss.student_id, ss.subject_id, 'Question ' || g, 'Answer ' || g,
                   now() - (g || ' minutes')::interval
            FROM student_subjects ss, generate_series(1, 40) g""")
        conn.execute("ANALYZE")


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


def database_pids(cluster: LocalCluster) -> list[int]:
    """Every process of the cluster: postmasters and backends (cwd = a data directory) and
    PgBouncer."""
    dirs = {cluster.primary_dir.resolve(), cluster.replica_dir.resolve()}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) in dirs:
                    pids.append(int(entry.name))
            except OSError:
                pass
    pooler = cluster._pooler_pid()
    return pids + ([pooler] if pooler else [])


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    return {pid: process_cpu_s(pid) for pid in pids}


def restart_pooler(cluster: LocalCluster) -> None:
    """A fresh PgBouncer (same port and configuration) for each setup, so its idle server
    connections from the previous setup are not counted against the next one."""
    from studyhub.local import proc

    cluster._stop_pooler()
    proc.run_server_cmd([str(proc.pgbouncer_program()), "-d", "-q", str(cluster.pgbouncer_ini)],
                        what="pgbouncer")


# ---------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, secret: str, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STUDYHUB_"))}
    env.update(STUDYHUB_HOME=str(home), STUDYHUB_API_SECRET=secret)  # environment, not argv
    proc = subprocess.Popen(
        [sys.executable, "-m", "studyhub.cli.main", "serve", "--port", str(port), *flags],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the API did not answer /health within 60 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class ConnectionSampler(threading.Thread):
    """The most client backends the primary had at once during the run."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.max = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with self.cluster.admin_connect("studyhub") as conn:
            while not self.stop.is_set():
                (n,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'studyhub' "
                    "AND backend_type = 'client backend' AND usename = 'studyhub_app'"
                ).fetchone()
                self.max = max(self.max, n)
                self.stop.wait(0.25)


# ------------------------------------------------------------------------------- load
async def drive(url: str, students: list[Student], warmup_s: float, duration_s: float,
                result: Result) -> None:
    weights = [w for w, _ in MIX]
    actions = [a for _, a in MIX]
    # Idle connections expire on the client (2 s) before uvicorn closes them (5 s): otherwise a
    # request can race the server's close and fail with a transport error.
    limits = httpx.Limits(max_connections=len(students), max_keepalive_connections=len(students),
                          keepalive_expiry=2.0)
    measure_from = time.monotonic() + warmup_s
    end = measure_from + duration_s

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        async def request(method: str, path: str, st: Student, **kw) -> httpx.Response | None:
            started = time.monotonic()
            try:
                r = await http.request(method, path,
                                       headers={"Authorization": f"Bearer {st.token}"}, **kw)
            except httpx.HTTPError as exc:
                r, problem = None, type(exc).__name__
            else:
                problem = None if r.status_code < 400 else f"HTTP {r.status_code}"
            finished = time.monotonic()
            result.all_requests += 1
            if measure_from <= finished <= end:  # completions inside the measured window
                result.requests += 1
                result.latencies_ms.append((finished - started) * 1000)
                if problem:
                    result.errors += 1
                    result.error_samples[problem] = result.error_samples.get(problem, 0) + 1
            return r if problem is None else None

        async def student_loop(st: Student, rng: random.Random) -> None:
            while time.monotonic() < end:
                action = rng.choices(actions, weights)[0]
                if action == "review" and not st.due_ids:
                    action = "due"
                if action in ("get_note", "edit_note") and not st.note_ids:
                    action = "list_notes"
                if action == "due":
                    r = await request("GET", "/flashcards/due", st, params={"limit": 20})
                    if r is not None:
                        st.due_ids = [c["id"] for c in r.json()]
                elif action == "review":
                    card = st.due_ids.pop(0)
                    await request("POST", f"/flashcards/{card}/reviews", st,
                                  json={"rating": rng.choices([1, 2, 3, 4], [10, 15, 60, 15])[0],
                                        "review_duration_ms": rng.randint(2000, 15000)})
                elif action == "list_notes":
                    r = await request("GET", "/notes", st, params={"limit": 20})
                    if r is not None:
                        st.note_ids = [n["id"] for n in r.json()["items"]] or st.note_ids
                elif action == "get_note":
                    await request("GET", f"/notes/{rng.choice(st.note_ids)}", st)
                elif action == "create_note":
                    r = await request("POST", "/notes", st, json={
                        "subject_id": st.subject_id, "title": f"Bench note {uuid.uuid4().hex[:8]}",
                        "body": "Revision notes. " * rng.randint(5, 60)})
                    if r is not None:
                        st.note_ids.insert(0, r.json()["id"])
                elif action == "edit_note":
                    await request("PATCH", f"/notes/{rng.choice(st.note_ids)}", st,
                                  json={"body": "Edited. " * rng.randint(5, 60)})

        await asyncio.gather(*(student_loop(st, random.Random(i))
                               for i, st in enumerate(students)))
    result.duration_s = duration_s


def run_setup(name: str, flags: list[str], cluster: LocalCluster, home: Path, secret: str,
              picked: list[tuple[str, str]], args: argparse.Namespace) -> Result:
    log = home / f"api-{name.replace(' ', '_').replace('+', 'and')}.log"
    restart_pooler(cluster)
    proc, url = start_server(home, secret, flags, log)
    result = Result(name)
    sampler = ConnectionSampler(cluster)
    try:
        sampler.start()
        students = [Student(token, subject) for token, subject in picked]
        api_before, client_before = process_cpu_s(proc.pid), time.process_time()
        db_before = cpu_snapshot(database_pids(cluster))
        asyncio.run(drive(url, students, args.warmup, args.duration, result))
        db_after = cpu_snapshot(database_pids(cluster))
        result.api_cpu_s = process_cpu_s(proc.pid) - api_before
        result.client_cpu_s = time.process_time() - client_before
        result.db_cpu_s = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
        health = httpx.get(url + "/health", timeout=10).json()
        result.reads_on_replica = health["replica"]["reads_on_replica"]
        result.reads_on_primary = health["replica"]["reads_on_primary"]
    finally:
        sampler.stop.set()
        sampler.join(5)
        stop_server(proc)
    result.max_primary_connections = sampler.max
    result.load_average.append(os.getloadavg()[0])
    return result


def report(results: list[Result], clients: int, duration: float, rounds: int, data: str) -> None:
    base = results[0]
    load1 = os.getloadavg()[0]
    print(f"\nStudyHub API load test: {clients} concurrent clients, {rounds} round(s) of "
          f"{duration:g} s per setup after warm-up, data from {data}; {os.cpu_count()} CPU(s) "
          f"shared by everything (load average now {load1:.1f})\n")
    header = (f"{'setup':<24} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'server conns':>12} {'replica reads':>13} "
              f"{'req/s vs 1':>10} {'p99 vs 1':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        reads = r.reads_on_replica + r.reads_on_primary
        share = f"{100 * r.reads_on_replica / reads:.0f}%" if reads else "-"
        print(f"{r.setup:<24} {r.rps:>7.0f} {r.pct(50):>8.1f} {r.pct(95):>8.1f} "
              f"{r.pct(99):>8.1f} {r.errors:>6} {r.max_primary_connections:>12} {share:>13} "
              f"{r.rps / base.rps:>9.2f}x {r.pct(99) / base.pct(99):>7.2f}x")
    print("\nCPU per request (ms; warm-up included), independent of what else runs here:")
    print(f"{'setup':<24} {'API':>6} {'database+pooler':>16} {'load client':>12} {'total':>7}")
    for r in results:
        n = max(r.all_requests, 1)
        api, db, client = (1000 * x / n for x in (r.api_cpu_s, r.db_cpu_s, r.client_cpu_s))
        print(f"{r.setup:<24} {api:>6.2f} {db:>16.2f} {client:>12.2f} {api + db + client:>7.2f}")
    print("\nload average (1 min) after each round: " + "; ".join(
        f"{r.setup}: {', '.join(f'{x:.1f}' for x in r.load_average)}" for r in results))
    for r in results:
        if r.error_samples:
            print(f"  errors in {r.setup}: {r.error_samples}")
    print("\nserver conns: the most backends of the app role on the primary at once "
          "(max_connections = 100; PgBouncer: default_pool_size 20, max_db_connections 60).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="measured seconds per setup and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the three setups")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=200, help="concurrent students")
    parser.add_argument("--students", type=int, default=1000, help="students to seed")
    parser.add_argument("--keep", action="store_true", help="keep the cluster and logs")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="studyhub-bench-", dir="/tmp"))
    os.chmod(home, 0o755)
    os.environ["STUDYHUB_HOME"] = str(home)
    cluster = LocalCluster(home)
    try:
        print(f"cluster under {home}: primary + replica + PgBouncer", flush=True)
        cluster.up(replica=True, pooler=True)
        migrate.upgrade(cluster.profile())
        started = time.perf_counter()
        data = seed(cluster, args.students)
        print(f"seeded {args.students} students with {data} in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        secret = secrets.token_urlsafe(48)
        picked = pick_students(cluster, args.clients, secret)
        # Rounds interleave the setups, so a burst of other work on the machine does not
        # land on one setup only.
        results = {name: Result(name) for name, _ in SETUPS}
        for round_no in range(1, args.rounds + 1):
            for name, flags in SETUPS:
                print(f"round {round_no}/{args.rounds}: {name} ...", flush=True)
                results[name].merge(run_setup(name, flags, cluster, home, secret, picked, args))
        report(list(results.values()), args.clients, args.duration, args.rounds, data)
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
