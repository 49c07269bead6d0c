"""Writing a set's files: ``pg_dump --format=directory`` from the exported snapshot (the schema
and sequence values; for format 1 also the table data, each file compressed with zstd while
pg_dump writes it), and every table's rows as binary COPY by ``psql``, ``--jobs`` at a time,
compressed, encrypted (if) and hashed as they stream into the set's writer (a file, or an
upload: ``setio.py``). Every child gets its connection settings from ``connect.child_env``:
argv carries flags, paths and SQL without secrets."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from studyhub.connect import child_env
from studyhub.local.proc import pg_program
from studyhub.ops.backup.session import snapshot_literal
from studyhub.ops.backup.setformat import DATA_DIR, BackupError, Compression, FileEntry, TableFile
from studyhub.ops.backup.setio import SetWriter
from studyhub.ops.backup.streams import DATA_SUFFIX, CompressedFile, StreamCompressor
from studyhub.ops.backup.workers import (
    ProgressEvent,
    ProgressFn,
    raise_first,
    run_threads,
    stderr_tail,
)
from studyhub.profiles import Profile

_FINISHED_RE = re.compile(r"finished item (\d+) (TABLE DATA|BLOBS|LARGE OBJECTS?) (.*)$")
_DUMPING_RE = re.compile(r'dumping contents of table "(.*)"')


def run_pg_dump(profile: Profile, snapshot: str, dump_dir: Path, jobs: int,
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
    streams: dict[str, StreamCompressor] = {}
    zstd = compression.method == "zstd"
    done_tables = 0
    lines: list[str] = []

    def follow_new_files() -> None:
        if not zstd or not dump_dir.is_dir():
            return
        for entry in os.scandir(dump_dir):
            if entry.name not in streams and re.fullmatch(r"\d+\.dat", entry.name):
                streams[entry.name] = StreamCompressor(Path(entry.path), compression.level or 1)
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
        reason = f"killed by signal {-rc}" if rc < 0 else stderr_tail(lines)
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


def pattern_literal(schema: str, table: str) -> str:
    """A pg_dump name pattern matching exactly ``schema.table``: inside double quotes every
    character is literal (no ``*``/``?`` wildcards, no case folding)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def data_file_names(tables: list[tuple[str, str]], method: str) -> dict[tuple[str, str], str]:
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


def stream_child_output(argv: list[str], env: dict[str, str], writer: SetWriter, stored: str,
                        compression: Compression, procs: list[subprocess.Popen],
                        abort: threading.Event,
                        on_chunk: Callable[[int], None] | None = None) -> CompressedFile:
    """Run a client program whose standard output becomes the set's object ``stored``:
    compressed, encrypted (if) and hashed as it streams into the writer's sink (a file or a
    multipart upload), in 1 MB chunks read by this thread (the compressor and age release the
    GIL; an encrypted object is pulled through both by age: :meth:`CompressedFile.pump`).
    ``env`` carries the connection settings (``connect.child_env``), never argv. A failure —
    of the program, told in one line from its stderr, or of the sink — discards the object;
    so does ``abort`` (another worker failed)."""
    name = Path(stored).name
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/")
    procs.append(proc)
    try:
        out = writer.open_data(stored, compression)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr.read().splitlines()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        stdout = proc.stdout
        assert stdout is not None

        def read(n: int) -> bytes:
            if abort.is_set():
                proc.kill()  # started after another table failed: stop it (nobody reads on)
                return b""
            return stdout.read(n)

        out.pump(read, on_chunk)
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
        reason = f"killed by signal {-rc}" if rc < 0 else stderr_tail(msgs)
        raise BackupError(f"dumping {name} failed ({reason}); no backup set was written")
    try:
        out.close()
    except BaseException:
        out.discard()
        raise
    return out


def dump_table_binary(profile: Profile, snapshot: str, copy_sql: str, writer: SetWriter,
                      stored: str, compression: Compression, encoding: str,
                      procs: list[subprocess.Popen], abort: threading.Event) -> CompressedFile:
    """One table's rows, ``COPY … TO STDOUT (FORMAT binary)`` in a transaction that imported
    ``snapshot``, run by psql (its C client writes the stream; Python only moves 1 MB chunks
    into the compressor, which releases the GIL), into the set's object ``stored``.
    Credentials come from the environment."""
    argv = [str(pg_program("psql")), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
            "--command=BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"--command=SET TRANSACTION SNAPSHOT {snapshot_literal(snapshot)}",
            f"--command={copy_sql}", "--command=COMMIT"]
    env = child_env(profile, "app")
    env["PGAPPNAME"] = "studyhub backup data"
    env["PGCLIENTENCODING"] = encoding  # text values travel in the client encoding
    return stream_child_output(argv, env, writer, stored, compression, procs, abort)


def dump_tables_binary(profile: Profile, conn: psycopg.Connection, snapshot: str,
                       tables: list[tuple[str, str]], columns: dict[tuple[str, str], list[str]],
                       writer: SetWriter, jobs: int, compression: Compression, encoding: str,
                       progress: ProgressFn) -> tuple[list[FileEntry], list[TableFile], float]:
    """Every table's data file, ``jobs`` at a time, biggest first (``tables`` is ordered)."""
    names = {t: writer.stored(rel) for t, rel in
             data_file_names(tables, compression.method).items()}
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
                f = dump_table_binary(profile, snapshot, copy_sql[t], writer, rel,
                                      compression, encoding, procs, abort)
                with lock:
                    done[t] = (FileEntry(rel, f.out.bytes, f.out.hexdigest()),
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
        run_threads(worker, min(jobs, len(tables)))
    except BaseException:
        abort.set()
        for p in list(procs):
            if p.poll() is None:
                p.kill()
        raise
    raise_first(errors, "dumping table data")
    entries = [done[t] for t in tables]
    return [e[0] for e in entries], [e[1] for e in entries], round(time.monotonic() - t0, 3)
