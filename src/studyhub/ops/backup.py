"""Verified logical backups and restores (the runbook's "Manual Backup" and "Restore from
Backup", made trustworthy). The on-disk format lives in ``ops/backup_set.py``.

create (format 2)
    One REPEATABLE READ transaction exports its snapshot and holds ACCESS SHARE locks on every
    table. From that snapshot: ``pg_dump -Fd --snapshot`` with every table's data excluded (by
    exact name) writes the schema and sequence values; one ``psql`` per table, ``--jobs`` at a
    time, biggest first, runs ``COPY … TO STDOUT (FORMAT binary)`` and a thread streams its
    output through zstd (or gzip, or nothing) into ``data/<schema>.<table>.bin.zst``; another
    connection counts every table's rows and checksums its content. The set is written under a
    ``.partial-`` name, fsynced, checked against its manifest and renamed only then.
    ``format_version=1`` still writes the previous format (pg_dump's own text-format data).
restore
    Always into a new (staging) database, renamed to its final name only after the restore has
    been verified: schema (pre-data) by pg_restore in one transaction; then, for format 2, one
    scheduler on ``--jobs`` connections loads each table (``TRUNCATE; COPY … FROM STDIN
    (FORMAT binary, FREEZE)`` in one transaction), builds its indexes and keys as soon as it is
    loaded, its foreign keys once the tables they join are ready, checksums and ANALYZEs it;
    sequence values and the rest by ``pg_restore -j N``. Format 1 sets go through ``pg_restore
    -j N`` for data and post-data as before. Then every table's count and checksum is compared
    with the manifest and the privacy erasure ledger re-applied. A restore that failed part-way
    resumes where it stopped when run again.
import
    A runbook-style plain ``.sql[.gz]`` dump, read statement by statement with PostgreSQL's own
    parser (``ops/plain_dump.py``) and run in one transaction as the app role, each statement on
    the extended protocol; no psql, so no meta-commands, and nothing beyond the new database.

Subprocesses get every connection setting from ``connect.child_env``: their argv carries only
flags, paths and SQL without secrets. Dumps never go through the transaction pooler.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import psycopg
from pglast import ast as pglast_ast
from psycopg import sql

from studyhub import __version__ as tool_version
from studyhub.connect import child_env, connect, first_line
from studyhub.errors import RefusedError
from studyhub.local.proc import pg_program
from studyhub.ops import plain_dump, privacy
from studyhub.ops.backup_set import (
    DATA_DIR,
    DUMP_DIR,
    FORMAT_VERSION,
    PARTIAL_PREFIX,
    VERIFIED,
    BackupError,
    Compression,
    FileEntry,
    Manifest,
    Problem,
    TableChecksum,
    TableFile,
    check_files,
    default_backup_dir,
    fsync_tree,
    hash_files,
    read_manifest,
    set_name,
    write_json_atomic,
)
from studyhub.ops.queries import load
from studyhub.ops.sqltext import execute_extended
from studyhub.profiles import Profile

# Row text (and so the checksum) depends on these; both sides of a comparison pin them.
CHECKSUM_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
)
DEFAULT_COMPRESSION = Compression("zstd", 1)  # see docs/backup.md for the measurements
DEFAULT_JOBS = 2
# Session settings for the restore's bulk work (PGOPTIONS of pg_restore): big sort memory for
# index builds, hash joins in memory for the foreign-key checks, no wait for WAL flush at commit,
# no parallel workers for index builds (the restore already keeps --jobs builds running; workers
# split the sort memory into external sorts and only contend: docs/backup.md has the numbers);
# plus default_toast_compression = lz4 where the server has it (COPY recompresses long values).
RESTORE_SETTINGS = {
    "maintenance_work_mem": "512MB",
    "max_parallel_maintenance_workers": "0",
    "work_mem": "256MB",
    "synchronous_commit": "off",
}

ProgressFn = Callable[["ProgressEvent"], None]


@dataclass
class ProgressEvent:
    phase: str  # dump | compress | checksum | verify | schema | data | post-data | ...
    done: int = 0
    total: int = 0
    bytes: int = 0
    message: str = ""


def _no_progress(_: ProgressEvent) -> None:
    pass


# ------------------------------------------------------------------------------ results
@dataclass
class BackupResult:
    name: str
    path: str
    profile: str
    database: str
    tables: int
    rows: int
    bytes: int
    compression: str
    jobs: int
    duration_s: float
    durations_s: dict[str, float]


@dataclass
class TableComparison:
    table: str
    expected_rows: int
    actual_rows: int | None
    checksum_ok: bool


@dataclass
class VerifyResult:
    name: str
    path: str
    ok: bool
    files_checked: int
    bytes_checked: int
    problems: list[str]
    restored: bool = False  # also restored into a scratch database and compared
    tables_checked: int = 0
    duration_s: float = 0.0
    durations_s: dict[str, float] = field(default_factory=dict)


@dataclass
class RestoreStep:
    name: str  # e.g. "schema", "data: public.notes", "index ix_notes_student_id"
    kind: str  # schema | data | index | constraint | fk | other | verify | ...
    duration_s: float


@dataclass
class RestoreResult:
    set_name: str
    profile: str
    database: str
    replaced: str | None  # the previous database, kept under this name (--replace)
    resumed: bool
    tables: int
    rows: int
    jobs: int
    settings: dict[str, str]
    duration_s: float
    phases_s: dict[str, float]  # schema, data, indexes, constraints, foreign keys, verify ...
    slowest_steps: list[RestoreStep]
    erasures: privacy.ErasureReapply | None


@dataclass
class ImportResult:
    file: str
    profile: str
    database: str
    tables: int
    rows: int
    table_rows: dict[str, int]
    bytes_read: int
    duration_s: float
    skipped_statements: dict[str, int]
    erasures: privacy.ErasureReapply | None


# ---------------------------------------------------------------------------- helpers
def parse_compression(text: str) -> Compression:
    """``zstd``, ``zstd:LEVEL`` (1-19), ``gzip``, ``gzip:LEVEL`` (1-9) or ``none``."""
    method, _, level_text = text.strip().lower().partition(":")
    limits = {"zstd": (1, 19, 1), "gzip": (1, 9, 1), "none": (0, 0, None)}
    if method not in limits:
        raise BackupError(f"unknown compression {text!r}; use zstd[:1-19], gzip[:1-9] or none")
    lo, hi, default = limits[method]
    if method == "none":
        if level_text:
            raise BackupError("compression 'none' takes no level")
        return Compression("none", None)
    try:
        level = int(level_text) if level_text else default
    except ValueError:
        raise BackupError(f"compression level {level_text!r} is not a number") from None
    if not lo <= level <= hi:
        raise BackupError(f"{method} level must be between {lo} and {hi}")
    return Compression(method, level)


def refuse_pooler(profile: Profile) -> None:
    """Dumps and restores hold a snapshot and session state for minutes: a transaction-mode
    pooler would hand their statements to different server connections."""
    ep = profile.endpoint("app")
    if ep.via_pooler or (profile.pooler_port and ep.port == profile.pooler_port):
        raise RefusedError(
            f"profile {profile.name} points at the connection pooler (port {ep.port}); backups "
            "and restores must reach the server's own port (a transaction pooler breaks "
            "pg_dump's snapshot and session settings). Set the profile's port to the server's."
        )


def _tool_version_line(program: str) -> str:
    out = subprocess.run([str(pg_program(program)), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def _stderr_tail(lines: list[str], n: int = 1) -> str:
    useful = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    return " / ".join(ln.strip() for ln in useful[-n:]) or "no message"


def _session(conn: psycopg.Connection) -> None:
    for stmt in CHECKSUM_SETTINGS:
        conn.execute(stmt)


def _run_threads(target: Callable[[], None], n: int) -> None:
    """Run ``target`` on ``n`` (at least one) threads and wait for all of them; workers put
    their exceptions in a shared list for :func:`_raise_first`."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(max(1, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _raise_first(errors: list[BaseException], what: str) -> None:
    """Re-raise the first worker error in the caller's thread (a server error as one line)."""
    if errors:
        exc = errors[0]
        if isinstance(exc, psycopg.Error):
            raise BackupError(f"{what} failed: {str(exc).strip().splitlines()[0]}") from None
        raise exc


def list_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(s, t) for s, t in conn.execute(load("get_backup_tables")).fetchall()]


CHECKSUM_QUERIES = {"record-hash": "get_table_rows_and_checksum",
                    "text-hash": "get_table_rows_and_text_checksum"}


def _checksum_one(conn: psycopg.Connection, schema: str, table: str,
                  method: str | None = None) -> TableChecksum:
    """Rows and checksum of one table by ``method``; without one, the record hash, falling
    back to the text hash when a column type has no hash function (inside a savepoint, so a
    snapshot transaction survives the failed attempt)."""
    for m in ([method] if method else ["record-hash", "text-hash"]):
        query = sql.SQL(load(CHECKSUM_QUERIES[m])).format(table=sql.Identifier(schema, table))
        try:
            with conn.transaction():
                rows, checksum = conn.execute(query).fetchone()
            return TableChecksum(schema, table, int(rows), str(checksum), m)
        except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
            if method:
                raise
    raise AssertionError("unreachable")


def table_checksums(
    profile: Profile,
    tables: list[tuple[str, str]],
    *,
    database: str | None = None,
    snapshot: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressFn = _no_progress,
    after_each: Callable[[psycopg.Connection, str, str], None] | None = None,
    methods: dict[str, str] | None = None,
) -> list[TableChecksum]:
    """Rows and checksum of each table, on ``jobs`` connections (all importing ``snapshot``
    when given, so they see exactly what the dump sees). Biggest tables should come first.
    ``methods`` (qualified name → method) reproduces a manifest's choices."""
    queue = list(tables)
    lock = threading.Lock()
    results: dict[tuple[str, str], TableChecksum] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(profile, "app", database=database,
                         application_name="studyhub backup checksum") as conn:
                _session(conn)
                conn.commit()
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    conn.execute("SET TRANSACTION SNAPSHOT %s" % _quote_literal(snapshot))
                while True:
                    with lock:
                        if not queue or errors:
                            break
                        schema, table = queue.pop(0)
                    results[(schema, table)] = _checksum_one(
                        conn, schema, table, (methods or {}).get(f"{schema}.{table}"))
                    if after_each:
                        after_each(conn, schema, table)
                    with lock:
                        progress(ProgressEvent("checksum", len(results), len(tables),
                                               message=f"{schema}.{table}"))
                conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    _run_threads(worker, min(jobs, len(tables)))
    _raise_first(errors, "checksum query")
    return [results[t] for t in tables]


def _quote_literal(value: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f-]+", value):
        raise BackupError(f"unexpected snapshot id {value!r}")
    return f"'{value}'"


def compare_tables(expected: list[TableChecksum], actual: list[TableChecksum]) -> list[Problem]:
    got = {t.qualified: t for t in actual}
    problems = []
    for t in expected:
        a = got.get(t.qualified)
        if a is None:
            problems.append(Problem(t.qualified, "table missing after restore"))
        elif a.rows != t.rows:
            problems.append(Problem(t.qualified, f"{a.rows} rows, backup has {t.rows}"))
        elif a.checksum != t.checksum:
            problems.append(Problem(t.qualified, "content checksum differs from the backup"))
    return problems


# -------------------------------------------------------------------- compression I/O
class _HashingWriter:
    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


# ---------------------------------------------------------------------------- pg_dump
_FINISHED_RE = re.compile(r"finished item (\d+) (TABLE DATA|BLOBS|LARGE OBJECTS?) (.*)$")
_DUMPING_RE = re.compile(r'dumping contents of table "(.*)"')


class _StreamCompressor(threading.Thread):
    """Compress one table file with zstd *while pg_dump writes it*: read to the current end,
    wait, read on; done once pg_dump has reported the file finished and the end is reached.
    Compression overlaps the dump instead of following it."""

    def __init__(self, path: Path, level: int):
        super().__init__(daemon=True)
        self.path = path
        self.level = level
        self.finished = threading.Event()
        self.abort = threading.Event()
        self.out: _HashingWriter | None = None
        self.error: BaseException | None = None

    @property
    def bytes_out(self) -> int:
        return self.out.bytes if self.out else 0

    def run(self) -> None:
        import zstandard

        try:
            dst = self.path.with_name(self.path.name + ".zst")
            with open(self.path, "rb") as src, open(dst, "wb") as ofh:
                self.out = _HashingWriter(ofh)
                # single-threaded: one stream per table pg_dump writes in parallel already;
                # libzstd worker threads on top only took CPU from the server (28 s vs 18 s)
                cctx = zstandard.ZstdCompressor(level=self.level)
                comp = cctx.stream_writer(self.out, closefd=False)
                while True:
                    done = self.finished.is_set()  # before the read: then EOF is the end
                    chunk = src.read(1 << 20)
                    if chunk:
                        comp.write(chunk)
                        continue
                    if done:
                        break
                    if self.abort.wait(0.02):
                        return
                comp.flush(zstandard.FLUSH_FRAME)
                ofh.flush()
            self.path.unlink()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc


def _run_pg_dump(profile: Profile, snapshot: str, dump_dir: Path, jobs: int,
                 compression: Compression, n_tables: int, progress: ProgressFn,
                 lock_wait_timeout: str, extra_args: list[str] | None = None,
                 ) -> tuple[dict[str, FileEntry], dict[str, float]]:
    """pg_dump -Fd from ``snapshot``; with zstd, each table file is compressed while pg_dump
    writes it. Returns the files written by us (with hashes) and timings."""
    argv = [str(pg_program("pg_dump")), "--format=directory", f"--jobs={jobs}",
            f"--snapshot={snapshot}", f"--file={dump_dir}", "--verbose", "--no-sync",
            f"--lock-wait-timeout={lock_wait_timeout}", *(extra_args or [])]
    gz = compression.level if compression.method == "gzip" else 0
    argv.append(f"--compress={gz}")
    env = child_env(profile, "app")
    env["PGAPPNAME"] = "studyhub backup"
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    streams: dict[str, _StreamCompressor] = {}
    zstd = compression.method == "zstd"
    done_tables = 0
    lines: list[str] = []

    def follow_new_files() -> None:
        if not zstd or not dump_dir.is_dir():
            return
        for entry in os.scandir(dump_dir):
            if entry.name not in streams and re.fullmatch(r"\d+\.dat", entry.name):
                streams[entry.name] = _StreamCompressor(Path(entry.path), compression.level or 1)
                streams[entry.name].start()

    def bytes_out() -> int:
        return sum(s.bytes_out for s in streams.values())

    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            lines.append(line)
            if len(lines) > 200:
                del lines[:100]
            follow_new_files()
            m = _FINISHED_RE.search(line)
            if m:
                done_tables += 1
                name = f"{m.group(1)}.dat"
                if name in streams:
                    streams[name].finished.set()
                progress(ProgressEvent("dump", done_tables, n_tables, bytes_out(), m.group(3)))
            elif jobs == 1 and (d := _DUMPING_RE.search(line)):
                progress(ProgressEvent("dump", done_tables, n_tables, bytes_out(), d.group(1)))
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        for s in streams.values():
            s.abort.set()
        raise
    dump_s = time.monotonic() - t0
    if rc != 0:
        for s in streams.values():
            s.abort.set()
        for s in streams.values():
            s.join()
        reason = f"killed by signal {-rc}" if rc < 0 else _stderr_tail(lines)
        raise BackupError(f"pg_dump failed ({reason}); no backup set was written")
    follow_new_files()
    for s in streams.values():  # pg_dump has exited: every file is complete
        s.finished.set()
    for s in streams.values():
        s.join()
        if s.error is not None:
            raise BackupError(f"compressing {s.path.name} failed: {s.error}")
    progress(ProgressEvent("dump", n_tables, n_tables, bytes_out()))
    written = {}
    for s in streams.values():
        rel = str(s.path.with_name(s.path.name + ".zst").relative_to(dump_dir.parent))
        written[rel] = FileEntry(rel, s.out.bytes, s.out.sha.hexdigest())  # type: ignore[union-attr]
    return written, {"dump": round(dump_s, 3),
                     "compress_tail": round(time.monotonic() - t0 - dump_s, 3)}


# ------------------------------------------------------------- format 2: binary table data
DATA_SUFFIX = {"zstd": ".bin.zst", "gzip": ".bin.gz", "none": ".bin"}


def _pattern_literal(schema: str, table: str) -> str:
    """A pg_dump name pattern matching exactly ``schema.table``: inside double quotes every
    character is literal (no ``*``/``?`` wildcards, no case folding)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def _data_file_names(tables: list[tuple[str, str]], method: str) -> dict[tuple[str, str], str]:
    """``data/<schema>.<table>.bin.zst``; characters unsafe in a file name become ``_`` (and a
    number keeps two tables apart if that makes their names collide)."""
    names: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for i, (schema, table) in enumerate(tables):
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{schema}.{table}")
        if base.lower() in used:
            base = f"{base}-{i}"
        used.add(base.lower())
        names[(schema, table)] = f"{DATA_DIR}/{base}{DATA_SUFFIX[method]}"
    return names


class _CompressedFile:
    """A file written through zstd, gzip or nothing, hashed (sha256) as it is written."""

    def __init__(self, path: Path, compression: Compression):
        self.fh = open(path, "wb")
        self.out = _HashingWriter(self.fh)
        self.method = compression.method
        self.raw_bytes = 0
        if self.method == "zstd":
            import zstandard

            self.w: Any = zstandard.ZstdCompressor(level=compression.level or 1).stream_writer(
                self.out, closefd=False)
        elif self.method == "gzip":
            self.w = gzip.GzipFile(fileobj=self.out, mode="wb",  # type: ignore[arg-type]
                                   compresslevel=compression.level or 1, mtime=0)
        else:
            self.w = self.out

    def write(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        self.w.write(data)

    def close(self) -> None:
        import zstandard

        if self.method == "zstd":
            self.w.flush(zstandard.FLUSH_FRAME)
        elif self.method == "gzip":
            self.w.close()
        self.fh.close()

    def discard(self) -> None:
        self.fh.close()


def _dump_table_binary(profile: Profile, snapshot: str, copy_sql: str, path: Path,
                       compression: Compression, encoding: str,
                       procs: list[subprocess.Popen], abort: threading.Event) -> _CompressedFile:
    """One table's rows, ``COPY … TO STDOUT (FORMAT binary)`` in a transaction that imported
    ``snapshot``, run by psql (its C client writes the stream; Python only moves 1 MB chunks
    into the compressor, which releases the GIL). Credentials come from the environment."""
    argv = [str(pg_program("psql")), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
            "--command=BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"--command=SET TRANSACTION SNAPSHOT {_quote_literal(snapshot)}",
            f"--command={copy_sql}", "--command=COMMIT"]
    env = child_env(profile, "app")
    env["PGAPPNAME"] = "studyhub backup data"
    env["PGCLIENTENCODING"] = encoding  # text values travel in the client encoding
    out = _CompressedFile(path, compression)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/")
    procs.append(proc)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr.read().splitlines()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            if abort.is_set():
                proc.kill()  # started after another table failed: stop it (nobody reads on)
                break
            out.write(chunk)
        rc = proc.wait()
        reader.join()
    except BaseException:
        proc.kill()
        proc.wait()
        out.discard()
        raise
    if abort.is_set() and rc == 0:
        rc = -9
    if rc != 0:
        out.discard()
        msgs = [e.decode(errors="replace") for e in err]
        reason = f"killed by signal {-rc}" if rc < 0 else _stderr_tail(msgs)
        raise BackupError(f"dumping {path.name} failed ({reason}); no backup set was written")
    out.close()
    return out


def _dump_tables_binary(profile: Profile, conn: psycopg.Connection, snapshot: str,
                        tables: list[tuple[str, str]], columns: dict[tuple[str, str], list[str]],
                        set_dir: Path, jobs: int, compression: Compression, encoding: str,
                        progress: ProgressFn) -> tuple[list[FileEntry], list[TableFile], float]:
    """Every table's data file, ``jobs`` at a time, biggest first (``tables`` is ordered)."""
    (set_dir / DATA_DIR).mkdir()
    names = _data_file_names(tables, compression.method)
    queue = list(tables)
    lock = threading.Lock()
    abort = threading.Event()
    procs: list[subprocess.Popen] = []
    errors: list[BaseException] = []
    done: dict[tuple[str, str], tuple[FileEntry, TableFile]] = {}
    written = [0]
    copy_sql = {
        t: sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(
            sql.Identifier(*t), sql.SQL(", ").join(map(sql.Identifier, columns[t]))).as_string(conn)
        for t in tables}
    t0 = time.monotonic()

    def worker() -> None:
        try:
            while True:
                with lock:
                    if not queue or errors or abort.is_set():
                        return
                    t = queue.pop(0)
                rel = names[t]
                f = _dump_table_binary(profile, snapshot, copy_sql[t], set_dir / rel,
                                       compression, encoding, procs, abort)
                with lock:
                    done[t] = (FileEntry(rel, f.out.bytes, f.out.sha.hexdigest()),
                               TableFile(t[0], t[1], rel, columns[t], f.raw_bytes))
                    written[0] += f.out.bytes
                    progress(ProgressEvent("dump", len(done), len(tables), written[0],
                                           f"{t[0]}.{t[1]}"))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            abort.set()
            for p in list(procs):
                if p.poll() is None:
                    p.kill()

    try:
        _run_threads(worker, min(jobs, len(tables)))
    except BaseException:
        abort.set()
        for p in list(procs):
            if p.poll() is None:
                p.kill()
        raise
    _raise_first(errors, "dumping table data")
    entries = [done[t] for t in tables]
    return [e[0] for e in entries], [e[1] for e in entries], round(time.monotonic() - t0, 3)



def _major(server_version: str) -> int:
    """15 from '15.18 (Debian 15.18-0+deb12u1)'."""
    m = re.match(r"(\d+)", server_version)
    if not m:
        raise BackupError(f"cannot read a major version from server version {server_version!r}")
    return int(m.group(1))


def _create_v2_parts(profile: Profile, conn: psycopg.Connection, snapshot: str,
                     tables: list[tuple[str, str]], partial: Path, jobs: int,
                     compression: Compression, encoding: str, lock_wait_timeout: str,
                     progress: ProgressFn, durations: dict[str, float],
                     ) -> tuple[dict[str, FileEntry], list[TableFile]]:
    """Format 2: schema and sequence values by ``pg_dump --snapshot`` with every table's data
    excluded (by exact name: a pattern would also drop SEQUENCE SET), beside it every table's
    rows as binary COPY from the same snapshot. The snapshot's own transaction holds ACCESS
    SHARE locks on every table until the end, as pg_dump does (no DROP/ALTER meanwhile)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_wait_timeout)))
    if tables:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
            sql.SQL(", ").join(sql.SQL("ONLY {}").format(sql.Identifier(*t)) for t in tables)))
    columns = {(r[0], r[1]): list(r[2])
               for r in conn.execute(load("get_backup_table_columns")).fetchall()}
    schema_result: dict[str, Any] = {}

    def run_schema() -> None:
        try:
            schema_result["ok"] = _run_pg_dump(
                profile, snapshot, partial / DUMP_DIR, 1, Compression("none"), 0, _no_progress,
                lock_wait_timeout,
                [f"--exclude-table-data={_pattern_literal(*t)}" for t in tables])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            schema_result["error"] = exc

    schema = threading.Thread(target=run_schema, daemon=True)
    schema.start()
    try:
        entries, table_files, data_s = _dump_tables_binary(
            profile, conn, snapshot, tables, columns, partial, jobs, compression, encoding,
            progress)
    finally:
        schema.join()
    if "error" in schema_result:
        raise schema_result["error"]
    durations["schema (pg_dump)"] = schema_result["ok"][1]["dump"]
    durations["data (binary COPY)"] = data_s
    return {e.path: e for e in entries}, table_files


# ----------------------------------------------------------------------------- create
def create_backup(
    profile: Profile,
    *,
    out_dir: Path | None = None,
    jobs: int = DEFAULT_JOBS,
    compression: Compression = DEFAULT_COMPRESSION,
    lock_wait_timeout: str = "60s",
    progress: ProgressFn = _no_progress,
    format_version: int = FORMAT_VERSION,
) -> BackupResult:
    """Write one verified backup set of the profile's app database (see module docstring).
    ``format_version=1`` writes the previous format (pg_dump's own text-format table data),
    kept so that sets of that format stay tested."""
    if format_version not in (1, 2):
        raise BackupError(f"cannot write backup set format {format_version} (1 or 2)")
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    refuse_pooler(profile)
    out_dir = (out_dir or default_backup_dir()).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started = datetime.now(timezone.utc)
    ep = profile.endpoint("app")
    name = set_name(profile.name, ep.database, started)
    if (out_dir / name).exists():
        raise BackupError(f"{out_dir / name} already exists (two backups in the same second)")
    partial = out_dir / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
    partial.mkdir(mode=0o700)
    durations: dict[str, float] = {}
    try:
        conn = connect(profile, "app", application_name="studyhub backup")
        try:
            _session(conn)
            conn.commit()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            database, server_version, encoding = conn.execute(load("get_database_facts")).fetchone()
            try:
                with conn.transaction():  # savepoint: the table may not exist
                    revision = list(conn.execute(load("get_alembic_revision")).fetchone()[0])
            except psycopg.errors.UndefinedTable:
                revision = []
            extensions = [dict(zip(("name", "version", "schema"), r))
                          for r in conn.execute(load("get_extensions")).fetchall()]
            tables = list_tables(conn)
            ledger_entries = privacy.save_ledger_beside_backups(profile, conn, out_dir)

            sums: dict[str, list[TableChecksum]] = {}
            sum_error: list[BaseException] = []

            def run_checksums() -> None:
                c0 = time.monotonic()
                try:
                    sums["tables"] = table_checksums(profile, tables, snapshot=snapshot, jobs=1)
                except BaseException as exc:  # noqa: BLE001
                    sum_error.append(exc)
                durations["checksum"] = round(time.monotonic() - c0, 3)

            checker = threading.Thread(target=run_checksums, daemon=True)
            checker.start()
            table_files: list[TableFile] = []
            if format_version == 1:
                written, dump_times = _run_pg_dump(profile, snapshot, partial / DUMP_DIR, jobs,
                                                   compression, len(tables), progress,
                                                   lock_wait_timeout)
                durations.update(dump_times)
            else:
                written, table_files = _create_v2_parts(
                    profile, conn, snapshot, tables, partial, jobs, compression, encoding,
                    lock_wait_timeout, progress, durations)
            checker.join()
        except psycopg.Error as exc:
            raise BackupError(f"backup failed: {str(exc).strip().splitlines()[0]}") from None
        finally:
            try:
                conn.close()  # ends the snapshot's transaction
            except psycopg.Error:
                pass
        if sum_error:
            raise sum_error[0]
        pg_dump_version = _tool_version_line("pg_dump")
        others = [p for p in (partial / DUMP_DIR).rglob("*")
                  if p.is_file() and str(p.relative_to(partial)) not in written]
        files = sorted([*written.values(), *hash_files(partial, others, jobs)],
                       key=lambda f: f.path)
        finished = datetime.now(timezone.utc)
        manifest = Manifest(
            format_version=format_version, tool="studyhub", tool_version=tool_version,
            pg_dump_version=pg_dump_version, server_version=server_version,
            profile=profile.name, host=ep.host, port=ep.port, database=database,
            encoding=encoding, direct=not ep.via_pooler, alembic_revision=revision,
            started_at=started.isoformat(timespec="seconds"),
            finished_at=finished.isoformat(timespec="seconds"), snapshot=snapshot,
            compression=compression, jobs=jobs,
            dump_format="directory" if format_version == 1 else "directory without table data + binary COPY per table",
            extensions=extensions, tables=sums["tables"], files=files,
            durations_s=durations, erasure_ledger_entries=ledger_entries,
            server_major=_major(server_version) if format_version == 2 else None,
            table_files=table_files,
        )
        write_json_atomic(partial / "manifest.json", manifest.to_dict())
        f0 = time.monotonic()
        fsync_tree(partial)
        problems = check_files(partial, read_manifest(partial), jobs)
        if problems:
            raise BackupError(f"the new set does not match its manifest: {problems[0]}")
        durations["fsync_verify"] = round(time.monotonic() - f0, 3)
        final = out_dir / name
        os.rename(partial, final)
        from studyhub.ops.backup_set import fsync_path

        fsync_path(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    total = time.monotonic() - t0
    return BackupResult(name, str(final), profile.name, database, len(manifest.tables),
                        manifest.total_rows, manifest.total_bytes, str(compression), jobs,
                        round(total, 3), durations)


# ----------------------------------------------------------------------------- restore
_DESCS = sorted([
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOBS", "CAST", "CHECK CONSTRAINT",
    "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE", "DATABASE PROPERTIES",
    "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER", "EXTENSION",
    "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE", "FUNCTION",
    "INDEX", "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
    "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY", "PROCEDURE",
    "PROCEDURAL LANGUAGE", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH", "SECURITY LABEL", "SEQUENCE",
    "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER", "SHELL TYPE", "STATISTICS", "STDSTRINGS",
    "SUBSCRIPTION", "TABLE", "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM",
    "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
], key=len, reverse=True)
_TOC_RE = re.compile(r"^(\d+); (\d+) (\d+) (" + "|".join(map(re.escape, _DESCS)) + r") (.*)$")
_ITEM_RE = re.compile(r"(launching|finished) item (\d+) (" + "|".join(map(re.escape, _DESCS)) + r") ?(.*)$")
_SERIAL_RE = re.compile(r'(?:creating ([A-Z ]+) "(.*)"|processing data for table "(.*)")')


@dataclass
class TocEntry:
    dump_id: int
    desc: str
    schema: str
    tag: str
    line: str

    @property
    def kind(self) -> str:
        return {"TABLE DATA": "data", "INDEX": "index", "CONSTRAINT": "constraint",
                "CHECK CONSTRAINT": "constraint", "FK CONSTRAINT": "fk",
                "SEQUENCE SET": "data"}.get(self.desc, "other")


def read_toc(archive: Path) -> list[TocEntry]:
    """``pg_restore -l``: the archive's table of contents."""
    out = subprocess.run([str(pg_program("pg_restore")), "--list", str(archive)],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise BackupError(f"pg_restore cannot read {archive}: {_stderr_tail(out.stderr.splitlines())}")
    entries = []
    for line in out.stdout.splitlines():
        m = _TOC_RE.match(line)
        if not m:
            continue
        rest = m.group(5)
        schema, _, tag_owner = rest.partition(" ")
        tag = tag_owner.rsplit(" ", 1)[0] if " " in tag_owner else tag_owner
        entries.append(TocEntry(int(m.group(1)), m.group(4), schema, tag, line))
    return entries


def _is_extension_entry(e: TocEntry) -> bool:
    return e.desc == "EXTENSION" or (e.desc == "COMMENT" and e.tag.startswith("EXTENSION "))


def _admin_database(profile: Profile) -> str:
    return "postgres" if profile.is_local else "defaultdb"


def _admin(profile: Profile) -> psycopg.Connection:
    return connect(profile, "admin", database=_admin_database(profile), autocommit=True,
                   application_name="studyhub restore")


def _staging_name(target: str) -> str:
    suffix = "_restoring"
    return target.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def _db_exists(admin: psycopg.Connection, name: str) -> bool:
    return bool(admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone())


def _db_comment(admin: psycopg.Connection, name: str) -> str | None:
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,)).fetchone()
    return row[0] if row else None


def database_is_empty(profile: Profile, name: str) -> bool:
    with connect(profile, "admin", database=name, application_name="studyhub restore") as conn:
        return bool(conn.execute(load("get_database_is_empty")).fetchone()[0])


def _set_comment(admin: psycopg.Connection, db: str, text: str) -> None:
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), sql.Literal(text)))


def _drop_database(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class _FifoFeeder:
    """Serve a zstd set's table files to pg_restore through named pipes: each ``NNNN.dat`` in a
    scratch directory is a FIFO that a thread fills, decompressing ``NNNN.dat.zst``, when
    pg_restore opens it. Nothing uncompressed is written to disk."""

    def __init__(self, dump_dir: Path):
        self.src = dump_dir
        self.dir = Path(tempfile.mkdtemp(prefix="studyhub-restore-"))
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        for p in dump_dir.iterdir():
            if p.name.endswith(".dat.zst"):
                fifo = self.dir / p.name[: -len(".zst")]
                os.mkfifo(fifo, 0o600)
                t = threading.Thread(target=self._feed, args=(p, fifo), daemon=True)
                self.threads.append(t)
            else:
                (self.dir / p.name).symlink_to(p)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _feed(self, src: Path, fifo: Path) -> None:
        import zstandard

        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    self.errors.append(f"{fifo.name}: {exc}")
                    return
                if self.stop.wait(0.02):
                    return
        os.set_blocking(fd, True)
        try:
            with open(src, "rb") as ifh, os.fdopen(fd, "wb") as ofh:
                zstandard.ZstdDecompressor().copy_stream(ifh, ofh, write_size=1 << 20)
        except BrokenPipeError:
            pass  # pg_restore stopped reading (it failed); its own error is reported

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class _Item:
    desc: str
    tag: str
    start: float
    end: float | None = None


def _run_pg_restore(profile: Profile, database: str, archive: Path, list_file: Path,
                    sections: list[str], jobs: int, settings: dict[str, str],
                    single_transaction: bool, progress: ProgressFn, total_items: int,
                    items: dict[int, _Item]) -> None:
    argv = [str(pg_program("pg_restore")), "--dbname=", "--no-owner", "--no-acl",
            "--exit-on-error", "--verbose", f"--use-list={list_file}",
            *[f"--section={s}" for s in sections]]
    if single_transaction:
        argv.append("--single-transaction")
    else:
        argv.append(f"--jobs={jobs}")
    argv.append(str(archive))
    env = child_env(profile, "app", database)
    env["PGAPPNAME"] = "studyhub restore"
    env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    lines: list[str] = []
    done = 0
    last_serial: _Item | None = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            lines.append(line)
            if len(lines) > 200:
                del lines[:100]
            now = time.monotonic()
            m = _ITEM_RE.search(line)
            if m:
                dump_id = int(m.group(2))
                if m.group(1) == "launching":
                    items[dump_id] = _Item(m.group(3), m.group(4), now)
                elif dump_id in items:
                    items[dump_id].end = now
                    done += 1
                    progress(ProgressEvent("restore", done, total_items, message=f"{m.group(3)} {m.group(4)}"))
                continue
            s = _SERIAL_RE.search(line)
            if s and jobs == 1 and not single_transaction:
                if last_serial:
                    last_serial.end = now
                    done += 1
                    progress(ProgressEvent("restore", done, total_items, message=last_serial.tag))
                desc = s.group(1) or "TABLE DATA"
                last_serial = _Item(desc, s.group(2) or s.group(3), now)
                items[-len(items) - 1] = last_serial
        rc = proc.wait()
        if last_serial and last_serial.end is None:
            last_serial.end = time.monotonic()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        reason = f"killed by signal {-rc}" if rc < 0 else _stderr_tail(lines, 2)
        raise BackupError(f"pg_restore failed: {reason}")


def _remaining_items(conn: psycopg.Connection, entries: list[TocEntry],
                     manifest: Manifest) -> list[TocEntry]:
    """For a resumed restore: the data and post-data items not yet in the database. A table's
    data is one COPY (atomic), so a table with rows is complete; an index or constraint that
    exists was built completely (a failed build leaves nothing)."""
    expected_rows = {t.qualified: t.rows for t in manifest.tables}
    remaining = []
    for e in entries:
        if e.desc == "TABLE DATA":
            if expected_rows.get(f"{e.schema}.{e.tag}", 1) == 0:
                continue
            has_rows = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {})").format(
                    sql.Identifier(e.schema, e.tag))).fetchone()[0]
            if has_rows:
                continue
        elif e.desc == "INDEX":
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                            (sql.Identifier(e.schema, e.tag).as_string(conn),)).fetchone()[0]:
                continue
        elif e.desc in ("CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER"):
            table, _, name = e.tag.partition(" ")
            catalog = "pg_trigger WHERE tgrelid" if e.desc == "TRIGGER" else "pg_constraint WHERE conrelid"
            column = "tgname" if e.desc == "TRIGGER" else "conname"
            found = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM {catalog} = to_regclass(%s) AND {column} = %s)",
                (sql.Identifier(e.schema, table).as_string(conn), name)).fetchone()[0]
            if found:
                continue
        remaining.append(e)
    conn.rollback()
    return remaining


def _write_list(path: Path, entries: list[TocEntry]) -> Path:
    path.write_text("".join(e.line + "\n" for e in entries))
    return path


def _data_chunks(path: Path, method: str) -> Iterator[bytes]:
    """The decompressed bytes of one data file, in chunks of about 1 MB in. A zstd frame that
    does not end (a truncated file) is an error, not a silent short read."""
    with open(path, "rb") as fh:
        if method == "zstd":
            import zstandard

            dobj = zstandard.ZstdDecompressor().decompressobj()
            while chunk := fh.read(1 << 20):
                out = dobj.decompress(chunk)
                if out:
                    yield out
            if not dobj.eof:
                raise BackupError(f"{path.name} ends in the middle of its zstd frame (truncated)")
        elif method == "gzip":
            with gzip.GzipFile(fileobj=fh) as gz:
                while chunk := gz.read(1 << 20):
                    yield chunk
        else:
            while chunk := fh.read(1 << 20):
                yield chunk


_POST_HEADER_RE = re.compile(
    r"^--\n-- Name: (?P<name>.*); Type: (?P<desc>[A-Z ]+); Schema: (?P<schema>[^;]*); "
    r"Owner: [^\n]*\n--\n", re.M)
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_ON_TABLE_RE = re.compile(
    r"^(?:ALTER TABLE ONLY|CREATE (?:UNIQUE )?INDEX " + _IDENT + r" ON(?: ONLY)?) "
    r"(?P<qual>" + _IDENT + r"\." + _IDENT + r")", re.M)
_SESSION_LINE_RE = re.compile(r"^(SET |SELECT pg_catalog\.set_config\(|\\)")


def _unquote_qualified(text: str) -> tuple[str, str]:
    parts = re.findall(_IDENT, text)
    return tuple(p[1:-1].replace('""', '"') if p.startswith('"') else p  # type: ignore[return-value]
                 for p in parts[:2])


_REFERENCES_RE = re.compile(r"\bREFERENCES (?P<qual>" + _IDENT + r"\." + _IDENT + r")\(")


# The table lock each scheduled task takes, and which modes conflict (PostgreSQL's table-level
# lock matrix): two tasks whose locks conflict never run at once on a table, because one
# would only wait for the other with a connection held idle.
_TASK_LOCK = {"INDEX": "SHARE", "KEY INDEX": "SHARE", "KEY ATTACH": "ACCESS EXCLUSIVE",
              "CONSTRAINT": "ACCESS EXCLUSIVE",
              "FK CONSTRAINT": "SHARE ROW EXCLUSIVE", "CHECKSUM": "ACCESS SHARE",
              "ANALYZE": "SHARE UPDATE EXCLUSIVE"}
_LOCK_CONFLICTS = {
    "ACCESS SHARE": {"ACCESS EXCLUSIVE"},
    "SHARE UPDATE EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                               "ACCESS EXCLUSIVE"},
    "SHARE": {"SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE ROW EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                            "ACCESS EXCLUSIVE"},
    "ACCESS EXCLUSIVE": {"ACCESS SHARE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                         "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE"},
}


@dataclass
class _PostItem:
    entry: TocEntry
    table: tuple[str, str]
    statement: str
    references: tuple[str, str] | None = None  # FK CONSTRAINT: the referenced table
    after: "_PostItem | None" = None  # runs only once that item is done
    done: bool = False
    index: str | None = None  # KEY INDEX: the name of the unique index it builds


_SIMPLE_KEY_RE = re.compile(
    r"ALTER TABLE ONLY (?P<qual>" + _IDENT + r"\." + _IDENT + r")\s+ADD CONSTRAINT "
    r"(?P<name>" + _IDENT + r") (?P<kind>PRIMARY KEY|UNIQUE) \((?P<cols>[^()]*)\);")  # fullmatch


def _split_keys(items: list[_PostItem], tables: set[tuple[str, str]]) -> list[_PostItem]:
    """A plain primary key or unique constraint becomes two steps: ``CREATE UNIQUE INDEX`` (a
    SHARE lock: it builds beside the table's other indexes) and ``ADD CONSTRAINT … USING
    INDEX`` (instant), the same catalog result as ``ADD CONSTRAINT … (cols)`` whose ACCESS
    EXCLUSIVE lock would keep the table's other builds waiting. Anything less plain
    (DEFERRABLE, INCLUDE, NULLS NOT DISTINCT, partitioned tables) stays one step."""
    out: list[_PostItem] = []
    for p in items:
        m = _SIMPLE_KEY_RE.fullmatch(p.statement) if p.entry.desc == "CONSTRAINT" else None
        if not m or p.table not in tables:
            out.append(p)
            continue
        build = _PostItem(TocEntry(p.entry.dump_id, "KEY INDEX", p.entry.schema, p.entry.tag,
                                   p.entry.line), p.table,
                          f"CREATE UNIQUE INDEX {m.group('name')} ON {m.group('qual')} "
                          f"USING btree ({m.group('cols')});",
                          index=re.sub(r'^"|"$', "", m.group("name")).replace('""', '"'))
        attach = _PostItem(TocEntry(p.entry.dump_id, "KEY ATTACH", p.entry.schema, p.entry.tag,
                                    p.entry.line), p.table,
                           f"ALTER TABLE ONLY {m.group('qual')} ADD CONSTRAINT {m.group('name')} "
                           f"{m.group('kind')} USING INDEX {m.group('name')};", after=build)
        out += [build, attach]
    return out


def _post_data_statements(archive: Path, entries: list[TocEntry], work: Path,
                          ) -> tuple[list[_PostItem], list[str]]:
    """The SQL of each index, key and foreign key among ``entries``, with the table it is on
    (and the table a foreign key references), from ``pg_restore -f -`` (no database
    involved): our scheduler runs these as soon as their tables are ready. Also returns the
    session settings pg_restore would send (the same for every item: tablespaces and table
    access methods other than the default are not carried over). Items whose SQL or tables
    cannot be told are left out: they go to the final pg_restore with everything else."""
    wanted = [e for e in entries if e.desc in ("INDEX", "CONSTRAINT", "FK CONSTRAINT")]
    if not wanted:
        return [], []
    out = subprocess.run([str(pg_program("pg_restore")), "--no-owner", "--no-acl", "--file=-",
                          f"--use-list={_write_list(work / 'post.list', wanted)}", str(archive)],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise BackupError(f"pg_restore cannot read {archive}: {_stderr_tail(out.stderr.splitlines())}")
    text = out.stdout
    by_key = {(e.desc, e.schema, e.tag): e for e in wanted}
    session: list[str] = []
    items: list[_PostItem] = []
    heads = list(_POST_HEADER_RE.finditer(text))
    for line in text[: heads[0].start() if heads else len(text)].splitlines():
        if line.startswith(("SET ", "SELECT pg_catalog.set_config(")) and line not in session:
            session.append(line)
    for i, h in enumerate(heads):
        body = text[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        lines = []
        for line in body.splitlines():
            if _SESSION_LINE_RE.match(line):
                if line.startswith(("SET ", "SELECT")) and line not in session:
                    session.append(line)
            elif line.strip() and not line.startswith("--"):
                lines.append(line)
        entry = by_key.get((h.group("desc"), h.group("schema"), h.group("name")))
        statement = "\n".join(lines).strip()
        m = _ON_TABLE_RE.search(statement)
        if entry is None or not m or statement.count(";") != 1:
            continue
        refs = None
        if entry.desc == "FK CONSTRAINT":
            r = _REFERENCES_RE.search(statement)
            if not r:
                continue
            refs = _unquote_qualified(r.group("qual"))
        items.append(_PostItem(entry, _unquote_qualified(m.group("qual")), statement, refs))
    if len([i for i in items if i.references is None]) < len(
            [e for e in wanted if e.desc != "FK CONSTRAINT"]):
        # an index or key we could not read goes to the final pg_restore; a foreign key may
        # need it, so every foreign key goes there too (pg_restore orders them after it)
        items = [i for i in items if i.references is None]
    return items, session


def _restore_v2_parallel(profile: Profile, database: str, set_dir: Path, manifest: Manifest,
                         post: list[_PostItem], session: list[str], jobs: int,
                         settings: dict[str, str], progress: ProgressFn,
                         ) -> tuple[list[RestoreStep], list[TableChecksum], float]:
    """Format 2's data, index/key/foreign-key builds and verification on ``jobs`` connections,
    each task started as soon as what it needs is done (no barrier between phases):

    * data, biggest table first: one transaction per table, ``TRUNCATE ONLY t; COPY t (cols)
      FROM STDIN (FORMAT binary, FREEZE)`` fed by streaming decompression. A table with rows is
      complete, so a resumed restore skips it (reloading one would replace, not duplicate);
    * an index or primary/unique key: once its table is loaded;
    * a foreign key: once both tables are loaded and the referenced table's keys and indexes
      are built;
    * verify: once the table is loaded, its row count and checksum (compared with the
      manifest by the caller); ANALYZE once its indexes and keys are built too.

    Loads go first (they unblock everything else), then the ready task on the biggest table
    (keys, then indexes, checksum, foreign keys, ANALYZE). Tasks whose table locks conflict
    never run at once (one would only wait for the other). Returns the steps, every
    table's checksum, and when the last table was loaded."""
    sizes = {f.path: f.bytes for f in manifest.files}
    expected = {t.qualified: t.rows for t in manifest.tables}
    raw = {(f.schema, f.table): f.raw_bytes or sizes.get(f.path, 0) for f in manifest.table_files}
    post = _split_keys(post, set(raw))
    # the work a table brings, in rough seconds: loading its bytes, then reading its rows
    # once per index, key and foreign key (and checksum). The table with the most goes first:
    # it is the critical path (the biggest table with the most indexes, not the widest rows)
    n_items: dict[tuple[str, str], int] = {}
    for p in post:
        n_items[p.table] = n_items.get(p.table, 0) + 1
    rows = {(t.schema, t.table): t.rows for t in manifest.tables}

    def work(t: tuple[str, str]) -> float:
        return raw.get(t, 0) / 100e6 + (n_items.get(t, 0) + 1) * rows.get(t, 0) / 1.5e6

    data_queue = sorted(manifest.table_files, key=lambda f: -work((f.schema, f.table)))
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub restore") as conn:
        data_queue = [f for f in data_queue if expected.get(f.qualified, 0) > 0 and not conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {})").format(
                sql.Identifier(f.schema, f.table))).fetchone()[0]]
    verify_items = [_PostItem(TocEntry(0, kind, t.schema, t.table, ""), (t.schema, t.table), "")
                    for t in manifest.tables for kind in ("CHECKSUM", "ANALYZE")]
    order = {"CONSTRAINT": 0, "KEY INDEX": 1, "INDEX": 1, "KEY ATTACH": 2, "CHECKSUM": 3,
             "FK CONSTRAINT": 4, "ANALYZE": 5}
    queue = sorted(post + verify_items, key=lambda p: (-work(p.table), order[p.entry.desc]))
    not_loaded = {(f.schema, f.table) for f in data_queue}
    builds = ("INDEX", "CONSTRAINT", "KEY INDEX", "KEY ATTACH")
    unbuilt: dict[tuple[str, str], int] = {}  # table → its index/key builds not yet done
    for p in post:
        if p.entry.desc in builds:
            unbuilt[p.table] = unbuilt.get(p.table, 0) + 1
    total = len(data_queue) + len(queue)
    cond = threading.Condition()
    running: dict[tuple[str, str], list[str]] = {}
    steps: list[RestoreStep] = []
    sums: dict[str, TableChecksum] = {}
    methods = {t.qualified: t.method for t in manifest.tables}
    errors: list[BaseException] = []
    loaded = [0]
    t0 = time.monotonic()
    data_done_at = [t0]

    def tables_of(p: _PostItem) -> list[tuple[str, str]]:
        return [p.table] + ([p.references] if p.references and p.references != p.table else [])

    def ready(p: _PostItem) -> bool:
        if any(t in not_loaded for t in tables_of(p)):
            return False
        if p.entry.desc == "FK CONSTRAINT" and unbuilt.get(p.references, 0):  # type: ignore[arg-type]
            return False
        if p.entry.desc == "ANALYZE" and unbuilt.get(p.table, 0):  # statistics of every index
            return False
        if p.after is not None and not p.after.done:
            return False
        mine = _TASK_LOCK[p.entry.desc]
        return not any(_LOCK_CONFLICTS[mine] & {_TASK_LOCK[d] for d in running.get(t, [])}
                       for t in tables_of(p))

    def pick() -> TableFile | _PostItem | None:
        with cond:
            while True:
                if errors:
                    return None
                if data_queue:
                    return data_queue.pop(0)
                for i, p in enumerate(queue):
                    if ready(p):
                        for t in tables_of(p):
                            running.setdefault(t, []).append(p.entry.desc)
                        return queue.pop(i)
                if not queue:
                    return None
                cond.wait()

    def finished(step: RestoreStep | None, p: TableFile | _PostItem, ok: bool = True) -> None:
        with cond:
            if isinstance(p, TableFile):
                not_loaded.discard((p.schema, p.table))
                if not not_loaded:
                    data_done_at[0] = time.monotonic()
            else:
                for t in tables_of(p):
                    running[t].remove(p.entry.desc)
                p.done = ok
                if ok and p.entry.desc in builds:
                    unbuilt[p.table] -= 1
            if step:
                steps.append(step)
                progress(ProgressEvent("data" if step.kind == "data" else "post-data",
                                       len(steps), total, loaded[0], step.name))
            cond.notify_all()

    def load_one(conn: psycopg.Connection, f: TableFile) -> None:
        table = sql.Identifier(f.schema, f.table)
        cols = sql.SQL(", ").join(map(sql.Identifier, f.columns))
        s0 = time.monotonic()
        try:
            with conn.transaction():
                conn.execute(sql.SQL("TRUNCATE ONLY {}").format(table))
                with conn.cursor().copy(sql.SQL(
                        "COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)").format(table, cols)) as cp:
                    for chunk in _data_chunks(set_dir / f.path, manifest.compression.method):
                        cp.write(chunk)
                        loaded[0] += len(chunk)
        except psycopg.Error as exc:
            raise BackupError(f"loading {f.path} into {f.qualified} failed: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        except (OSError, EOFError, BackupError) as exc:
            raise BackupError(f"cannot read {f.path}: {exc}") from None
        except Exception as exc:  # zstandard.ZstdError and other decoder errors
            raise BackupError(f"cannot read {f.path}: {exc.__class__.__name__}: {exc}") from None
        finished(RestoreStep(f"table data {f.qualified}", "data", round(time.monotonic() - s0, 3)), f)

    def run_one(conn: psycopg.Connection, p: _PostItem) -> None:
        s0 = time.monotonic()
        try:
            if p.entry.desc == "CHECKSUM":
                sums[f"{p.table[0]}.{p.table[1]}"] = _checksum_one(
                    conn, p.table[0], p.table[1], methods.get(f"{p.table[0]}.{p.table[1]}"))
                step = RestoreStep(f"checksum {p.table[0]}.{p.table[1]}", "verify",
                                   round(time.monotonic() - s0, 3))
            elif p.entry.desc == "ANALYZE":
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*p.table)))
                step = RestoreStep(f"analyze {p.table[0]}.{p.table[1]}", "verify",
                                   round(time.monotonic() - s0, 3))
            else:
                exists = p.entry.desc == "KEY INDEX" and conn.execute(  # built by a failed run
                    "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(
                        p.table[0], p.index or "").as_string(conn),)).fetchone()[0]
                if not exists:
                    # one statement, written by pg_restore: the server refuses a second
                    execute_extended(conn, p.statement)
                label = {"KEY INDEX": "constraint", "KEY ATTACH": "constraint (attach)"}.get(
                    p.entry.desc, p.entry.desc.lower())
                step = RestoreStep(f"{label} {p.entry.tag}", "constraint" if p.entry.desc
                                   .startswith("KEY") else p.entry.kind,
                                   round(time.monotonic() - s0, 3))
        except psycopg.Error as exc:
            finished(None, p, ok=False)
            what = {"CHECKSUM": "checksumming", "ANALYZE": "analyzing"}.get(
                p.entry.desc, "building " + p.entry.desc.lower())
            raise BackupError(f"{what} {p.entry.tag} failed: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        finished(step, p)

    def worker() -> None:
        try:
            with connect(profile, "app", database=database, autocommit=True,
                         application_name="studyhub restore data") as conn:
                for line in session:  # SET … lines pg_restore wrote, one statement each
                    execute_extended(conn, line)
                _session(conn)  # the text checksum's settings (binary COPY ignores them)
                conn.execute("SELECT set_config('client_encoding', %s, false)",
                             (manifest.encoding,))
                for k, v in settings.items():
                    conn.execute("SELECT set_config(%s, %s, false)", (k, v))
                while (task := pick()) is not None:
                    if isinstance(task, TableFile):
                        load_one(conn, task)
                    else:
                        run_one(conn, task)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            with cond:
                errors.append(exc)
                cond.notify_all()

    progress(ProgressEvent("data", 0, total))
    _run_threads(worker, min(jobs, total))
    _raise_first(errors, "restoring table data")
    return steps, [sums[t.qualified] for t in manifest.tables], round(data_done_at[0] - t0, 3)

def restore_backup(
    set_dir: Path,
    profile: Profile,
    database: str,
    *,
    jobs: int = DEFAULT_JOBS,
    replace: bool = False,
    settings: dict[str, str] | None = None,
    reapply_erasures: bool = True,
    verify_files_first: bool = True,
    progress: ProgressFn = _no_progress,
) -> RestoreResult:
    """Restore ``set_dir`` into ``database`` on ``profile`` (see the module docstring)."""
    t0 = time.monotonic()
    refuse_pooler(profile)
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    settings = {**RESTORE_SETTINGS, **(settings or {})}
    manifest = read_manifest(set_dir)
    phases: dict[str, float] = {}
    if verify_files_first:
        progress(ProgressEvent("verify files", 0, len(manifest.files)))
        p0 = time.monotonic()
        problems = check_files(set_dir, manifest, jobs)
        phases["check files"] = round(time.monotonic() - p0, 3)
        if problems:
            raise BackupError(f"backup set {set_dir.name} is damaged, not restoring: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    staging = _staging_name(database)
    marker = f"studyhub restore of {set_dir.name}"
    resumed = False
    with _admin(profile) as admin:
        if admin.execute(load("get_server_has_lz4")).fetchone()[0]:
            settings.setdefault("default_toast_compression", "lz4")
        if manifest.server_major:
            here = int(admin.execute("SHOW server_version_num").fetchone()[0]) // 10000
            if here < manifest.server_major:
                raise RefusedError(
                    f"backup set {set_dir.name} holds binary COPY data from PostgreSQL "
                    f"{manifest.server_major}; it restores onto PostgreSQL "
                    f"{manifest.server_major} or newer, and {profile.name} runs {here}")
        if _db_exists(admin, database) and not database_is_empty(profile, database) and not replace:
            raise RefusedError(
                f"database {database} exists and is not empty; restore into a new name, or "
                f"use --replace to swap it out after a verified restore (it is kept, renamed)")
        if _db_exists(admin, staging):
            comment = _db_comment(admin, staging) or ""
            if comment == f"{marker}: schema done":
                resumed = True
            elif comment.startswith("studyhub restore of ") or database_is_empty(profile, staging):
                _drop_database(admin, staging)  # our own leftover, from another set or too early
            else:
                raise RefusedError(f"database {staging} exists and is not a restore of ours; "
                                   "drop or rename it first")
        if not resumed:
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {}").format(
                sql.Identifier(staging), sql.Identifier(profile.users["app"]),
                sql.Literal(manifest.encoding)))
            _set_comment(admin, staging, f"{marker}: in progress")
    archive = set_dir / DUMP_DIR
    entries = [e for e in read_toc(archive)]
    keep = [e for e in entries if not _is_extension_entry(e)]
    ext_schemas = {x["schema"] for x in manifest.extensions if x["schema"] != "public"}
    keep = [e for e in keep if not (e.desc == "SCHEMA" and e.tag in ext_schemas)]
    work = Path(tempfile.mkdtemp(prefix="studyhub-restore-list-"))
    items: dict[int, _Item] = {}
    data_steps: list[RestoreStep] = []
    actual: list[TableChecksum] = []
    try:
        if not resumed:
            p0 = time.monotonic()
            progress(ProgressEvent("schema", 0, 1, message="extensions and schema"))
            with connect(profile, "admin", database=staging, autocommit=True,
                         application_name="studyhub restore") as conn:
                for schema in sorted(ext_schemas):
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                        sql.Identifier(schema), sql.Identifier(profile.users["app"])))
                for ext in manifest.extensions:
                    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                        sql.Identifier(ext["name"]), sql.Identifier(ext["schema"])))
            _run_pg_restore(profile, staging, archive, _write_list(work / "pre.list", keep),
                            ["pre-data"], 1, settings, True, progress, 1, {})
            with _admin(profile) as admin:
                _set_comment(admin, staging, f"{marker}: schema done")
            phases["schema"] = round(time.monotonic() - p0, 3)
            todo = keep
        else:
            with connect(profile, "app", database=staging, application_name="studyhub restore") as conn:
                todo = _remaining_items(conn, keep, manifest)
        if manifest.format_version >= 2:
            p0 = time.monotonic()
            post, session = _post_data_statements(archive, todo, work)
            data_steps, actual, data_s = _restore_v2_parallel(
                profile, staging, set_dir, manifest, post, session, jobs, settings, progress)
            phases["data, indexes, keys, FKs, verify (wall)"] = round(time.monotonic() - p0, 3)
            phases["  of which until all data was loaded"] = data_s
            done_ids = {p.entry.dump_id for p in post}
            todo = [e for e in todo if e.dump_id not in done_ids]
        p0 = time.monotonic()
        n_items = len([e for e in todo if e.desc not in ("COMMENT", "ACL")])
        feeder = (_FifoFeeder(archive) if manifest.compression.method == "zstd"
                  and manifest.format_version == 1 else None)
        try:
            if feeder:
                feeder.start()
            _run_pg_restore(profile, staging, feeder.dir if feeder else archive,
                            _write_list(work / "rest.list", todo), ["data", "post-data"],
                            jobs, settings, False, progress, n_items, items)
        finally:
            if feeder:
                feeder.close()
        phases["data + indexes + constraints (wall)" if manifest.format_version == 1
               else "sequences and the rest (wall)"] = round(time.monotonic() - p0, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = [RestoreStep(f"{i.desc.lower()} {i.tag}", TocEntry(0, i.desc, "", "", "").kind,
                         round((i.end or i.start) - i.start, 3)) for i in items.values()]
    steps += data_steps
    for label, kind in (("data (busy)", "data"), ("indexes (busy)", "index"),
                        ("constraints (busy)", "constraint"), ("foreign keys (busy)", "fk"),
                        ("verify + analyze (busy)", "verify")):
        busy = sum(st.duration_s for st in steps if st.kind == kind)
        if busy:
            phases[label] = round(busy, 3)
    # verify every table against the manifest; ANALYZE each on the way (fresh statistics).
    # Format 2 did both in its scheduler, as soon as each table was complete.
    if manifest.format_version == 1:
        p0 = time.monotonic()
        tables = [(t.schema, t.table) for t in sorted(manifest.tables, key=lambda t: -t.rows)]

        def analyze(conn: psycopg.Connection, schema: str, table: str) -> None:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))

        actual = table_checksums(profile, tables, database=staging, jobs=jobs, progress=progress,
                                 after_each=analyze,
                                 methods={t.qualified: t.method for t in manifest.tables})
        phases["verify + analyze"] = round(time.monotonic() - p0, 3)
    problems = compare_tables(manifest.tables, actual)
    files_of = {f.qualified: f.path for f in manifest.table_files}
    problems = [Problem(p.path, p.issue + (f" (data file {files_of[p.path]})" if p.path in files_of else ""))
                for p in problems]
    if problems:
        raise BackupError(
            f"restored database {staging} does not match the backup: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + f"; {database} was not touched, {staging} is kept for inspection")
    erasures = None
    if reapply_erasures:
        p0 = time.monotonic()
        live = profile.database if profile.database not in (database, staging) else None
        if replace and database == profile.database:
            live = database  # the database about to be replaced still holds the newest ledger
        erasures = privacy.reapply_erasure_ledger(profile, staging, set_dir.parent, live)
        phases["erasure ledger"] = round(time.monotonic() - p0, 3)
    p0 = time.monotonic()
    replaced = _swap_in(profile, staging, database)
    phases["rename"] = round(time.monotonic() - p0, 3)
    slowest = sorted(steps, key=lambda s: -s.duration_s)[:8]
    return RestoreResult(
        set_dir.name, profile.name, database, replaced, resumed, len(manifest.tables),
        manifest.total_rows, jobs, settings, round(time.monotonic() - t0, 3), phases, slowest,
        erasures)


def _swap_in(profile: Profile, staging: str, database: str) -> str | None:
    """Give the verified staging database its final name; an existing database of that name
    is kept under ``{name}_before_restore_{UTC time}`` (never dropped)."""
    aside = None
    with _admin(profile) as admin:
        if _db_exists(admin, database):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
            aside = database.encode()[: 63 - 30].decode(errors="ignore") + f"_before_restore_{stamp}"
            ident = sql.Identifier(database)
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident))
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
                _rename_when_idle(admin, database, aside)
            except BaseException:
                admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident))
                raise
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(aside)))
        try:
            _rename_when_idle(admin, staging, database)
        except BaseException:
            if aside:
                admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(aside), sql.Identifier(database)))
            raise
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(database)))
    return aside


def _rename_when_idle(admin: psycopg.Connection, old: str, new: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise BackupError(f"database {old} is still in use; could not rename it to {new}") from None
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (old,))
            time.sleep(0.1)


# ------------------------------------------------------------------------------ verify
def verify_backup(set_dir: Path, *, restore: bool = False, local_profile: Profile | None = None,
                  jobs: int = DEFAULT_JOBS, progress: ProgressFn = _no_progress) -> VerifyResult:
    """Check every file against the manifest; with ``restore``, also restore into a scratch
    database on the local cluster, compare every table's rows and checksum, drop it."""
    t0 = time.monotonic()
    manifest = read_manifest(set_dir)
    durations: dict[str, float] = {}
    progress(ProgressEvent("verify files", 0, len(manifest.files)))
    problems = [str(p) for p in check_files(set_dir, manifest, jobs)]
    durations["check files"] = round(time.monotonic() - t0, 3)
    restored = False
    if restore and not problems:
        if local_profile is None or not local_profile.is_local:
            raise RefusedError("verify --restore restores into a scratch database on the local "
                               "cluster only (start it with: studyhub local up)")
        scratch = f"studyhub_verify_{os.getpid()}_{int(time.time())}"
        try:
            result = restore_backup(set_dir, local_profile, scratch, jobs=jobs,
                                    reapply_erasures=False, verify_files_first=False,
                                    progress=progress)
            durations.update({f"restore: {k}": v for k, v in result.phases_s.items()})
            restored = True
        except BackupError as exc:
            problems.append(str(exc))
        finally:
            with _admin(local_profile) as admin:
                _drop_database(admin, scratch)
                _drop_database(admin, _staging_name(scratch))
    ok = not problems
    result = VerifyResult(set_dir.name, str(set_dir), ok, len(manifest.files),
                          manifest.total_bytes, problems, restored,
                          len(manifest.tables) if restored else 0,
                          round(time.monotonic() - t0, 3), durations)
    write_json_atomic(set_dir / VERIFIED, {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ok": ok, "restored": restored, "problems": len(problems)})
    return result


# ------------------------------------------------------------------------------ import
def _open_dump(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file, decompressed stream); gzip recognised by its magic bytes."""
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    return raw, (gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw)


def _create_extension_sql(node: "pglast_ast.CreateExtensionStmt") -> sql.Composed:
    """The dump's CREATE EXTENSION, for the admin role: its name and schema only, from the
    parse tree."""
    q = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(node.extname))
    schema = next((o.arg.sval for o in node.options or () if o.defname == "schema"), None)
    if schema:
        q += sql.SQL(" WITH SCHEMA {}").format(sql.Identifier(schema))
    return q


def _copy_from_stdin_sql(node: "pglast_ast.CopyStmt") -> sql.Composed:
    """The dump's ``COPY table (columns) FROM stdin``, composed from its parse tree."""
    rel = node.relation
    target = sql.Identifier(*[p for p in (rel.catalogname, rel.schemaname, rel.relname) if p])
    if not node.attlist:
        return sql.SQL("COPY {} FROM STDIN").format(target)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(sql.Identifier(c.sval) for c in node.attlist))


def import_sql(
    path: Path,
    profile: Profile,
    database: str,
    *,
    progress: ProgressFn = _no_progress,
    reapply_erasures: bool = True,
) -> ImportResult:
    """Load a runbook-style plain SQL dump (``pg_dump URL | gzip``) into a new database, then
    counts, ANALYZE and the erasure ledger; the database gets its name only when all of that
    succeeded. The dump runs as the app role, in one transaction that stops at the first
    error, statement by statement: each read by PostgreSQL's own parser, judged
    (``plain_dump.judge``: nothing that leaves that transaction or database) and sent on the
    extended protocol (one statement per message), COPY rows as they are. No psql: a dump's
    meta-commands (``\\!`` runs a shell command) are refused, never run."""
    from studyhub.ops.space import table_sizes

    t0 = time.monotonic()
    refuse_pooler(profile)
    if not path.is_file():
        raise BackupError(f"no such file: {path}")
    staging = _staging_name(database)
    marker = f"studyhub import of {path.name}"
    with _admin(profile) as admin:
        if _db_exists(admin, database) and not database_is_empty(profile, database):
            raise RefusedError(f"database {database} exists and is not empty; import into a new name")
        if _db_exists(admin, staging):
            comment = _db_comment(admin, staging) or ""
            if comment.startswith(("studyhub restore of ", "studyhub import of ")):
                _drop_database(admin, staging)
            else:
                raise RefusedError(f"database {staging} exists and is not ours; drop or rename it first")
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
            sql.Identifier(staging), sql.Identifier(profile.users["app"])))
        _set_comment(admin, staging, f"{marker}: in progress")
    skipped: dict[str, int] = {}
    size = path.stat().st_size
    raw, stream = _open_dump(path)
    dump = plain_dump.PlainDump(
        stream, on_read=lambda: progress(ProgressEvent("import", raw.tell(), size, raw.tell())))
    line = 0
    try:
        with connect(profile, "admin", database=staging, autocommit=True,
                     application_name="studyhub import") as ext_conn, \
                connect(profile, "app", database=staging, autocommit=True,
                        application_name="studyhub import") as conn:
            for k, v in RESTORE_SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, false)", (k, v))
            with conn.transaction():
                for item in dump.items():
                    line = item.line
                    if item.statement is None:  # a psql meta-command line
                        if not plain_dump.RESTRICT_LINE.fullmatch(item.meta or ""):
                            raise RefusedError(
                                f"psql meta-command {(item.meta or '').split()[0]} is not SQL; "
                                "only SQL statements and COPY rows are imported, nothing else "
                                "is run")
                        skipped[plain_dump.SKIP_RESTRICT] = \
                            skipped.get(plain_dump.SKIP_RESTRICT, 0) + 1
                        continue
                    node = item.statement.node
                    reason = plain_dump.judge(item.statement)  # RefusedError: refuse it all
                    if reason is not None:
                        skipped[reason] = skipped.get(reason, 0) + 1
                        if isinstance(node, pglast_ast.CreateExtensionStmt):
                            ext_conn.execute(_create_extension_sql(node))
                    elif isinstance(node, pglast_ast.CopyStmt):  # FROM stdin: judge said so
                        with conn.cursor() as cur, cur.copy(_copy_from_stdin_sql(node)) as cp:
                            for chunk in dump.copy_data():
                                cp.write(chunk)
                    else:  # one statement per message: the server refuses a second one
                        execute_extended(conn, item.statement.text)
    except RefusedError as exc:
        raise RefusedError(f"refusing to import {path.name}: line {line}: {exc} (nothing was "
                           f"kept in {database})") from None
    except plain_dump.DumpError as exc:
        raise BackupError(f"cannot import {path.name}: {exc} (nothing was kept in "
                          f"{database})") from None
    except psycopg.Error as exc:
        raise BackupError(f"import stopped at the first error, nothing was kept in {database}: "
                          f"line {line}: {first_line(exc)} (the partial import is in "
                          f"{staging})") from None
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
        raise BackupError(f"cannot read {path.name}: {exc}") from None
    finally:
        raw.close()
    with connect(profile, "app", database=staging, autocommit=True,
                 application_name="studyhub import") as conn:
        conn.execute("ANALYZE")
        space = table_sizes(conn, exact_counts=True)
    table_rows = {f"{t.schema}.{t.table}": int(t.rows or 0) for t in space.tables}
    erasures = None
    if reapply_erasures:
        live = profile.database if profile.database not in (database, staging) else None
        erasures = privacy.reapply_erasure_ledger(profile, staging, default_backup_dir(), live)
    _swap_in(profile, staging, database)
    return ImportResult(str(path), profile.name, database, len(table_rows),
                        sum(table_rows.values()), table_rows, size,
                        round(time.monotonic() - t0, 3), skipped, erasures)
