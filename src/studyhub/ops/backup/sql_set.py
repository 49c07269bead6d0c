"""Portable sets (``backup create --format sql``): one plain SQL dump written by pg_dump itself,
for restoring where StudyHub is not installed — the runbook's ``pg_dump | gzip``, done safely.

create
    From the snapshot ``create`` exports (``create.py``: the same facts, every table's rows and
    checksum, the erasure ledger), ``pg_dump --format=plain --snapshot=…`` (:data:`PG_DUMP_FLAGS`,
    credentials in its environment, never argv) writes to a pipe; its output streams through
    zstd and, when the set is encrypted, age into the set's object ``dump.sql.zst[.age]`` — a
    file, or a multipart upload (``dump.stream_child_output``, the sinks of ``setio.py``): no
    full copy on this machine. The manifest (``"format": "sql"``, ``sql_file``) is written last,
    as for every set.
restore
    Into a new database, like every restore (``staging.py``): the manifest's extensions by the
    admin role, then the dump streamed — download, sha256, age, zstd — into the same importer
    as ``backup import`` (``import_sql.load_dump``: PostgreSQL's parser, statements judged, one
    transaction as the app role, no psql), then every table's rows and checksum compared with
    the manifest, the erasure ledgers re-applied, the rename (``finish.py``).

By hand, without StudyHub: ``age -d -i KEY dump.sql.zst.age | zstd -d | psql -v ON_ERROR_STOP=1``
(docs/backup.md, "Portable SQL sets").
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Iterator

import psycopg
import zstandard
from psycopg import sql

from studyhub.connect import child_env
from studyhub.local.proc import pg_program
from studyhub.ops.backup.checksums import table_checksums
from studyhub.ops.backup.dump import stream_child_output
from studyhub.ops.backup.finish import RestoreResult, reapply_and_swap_in, require_match
from studyhub.ops.backup.import_sql import load_dump
from studyhub.ops.backup.session import hold_snapshot_locks
from studyhub.ops.backup.setformat import SET_FORMATS, BackupError, Compression, FileEntry
from studyhub.ops.backup.setio import SetSource, SetWriter
from studyhub.ops.backup.staging import (
    admin_connection,
    create_extensions,
    drop_database,
    prepare_staging,
)
from studyhub.ops.backup.streams import data_chunks
from studyhub.ops.backup.workers import ProgressEvent, ProgressFn
from studyhub.profiles import Profile

SQL_FILE = {"zstd": "dump.sql.zst", "gzip": "dump.sql.gz", "none": "dump.sql"}

# What makes the dump load on another server, by another role (docs/backup.md says why):
PG_DUMP_FLAGS = (
    "--format=plain",
    "--encoding=UTF8",            # the importer reads UTF-8 only; psql converts for any server
    "--no-owner",                 # no ALTER … OWNER TO roles the other server does not have
    "--no-privileges",            # no GRANT/REVOKE to roles the other server does not have
    "--no-tablespaces",           # no SET default_tablespace to tablespaces it lacks
    "--no-subscriptions",         # a restored copy must never subscribe to production
    "--no-security-labels",       # label providers are a server's own
    "--quote-all-identifiers",    # names that a newer server reserves still load
    # pg_dump 15 has no --exclude-extension: naming only the built-in plpgsql, which pg_dump
    # never writes, leaves every extension out (created by an administrator before the load:
    # the manifest lists them; COMMENT ON EXTENSION would fail for any other role)
    "--extension=plpgsql",
)
DUMP_FORMAT = "plain SQL (pg_dump " + " ".join(PG_DUMP_FLAGS) + ")"


def parse_set_format(text: str) -> str:
    """``native`` or ``sql`` (a set's format); anything else is one line."""
    value = text.strip().lower()
    if value not in SET_FORMATS:
        raise BackupError(f"unknown backup format {text!r}; use native (binary COPY per table, "
                          "restored by studyhub) or sql (one plain SQL dump, portable)")
    return value


def dump_plain_sql(profile: Profile, conn: psycopg.Connection, snapshot: str,
                   tables: list[tuple[str, str]], writer: SetWriter, compression: Compression,
                   lock_wait_timeout: str, progress: ProgressFn,
                   durations: dict[str, float]) -> FileEntry:
    """The set's SQL dump, from ``snapshot`` (whose transaction, ``conn``, holds ACCESS SHARE
    locks on every table until the end, as for a native set): pg_dump's standard output
    compressed, encrypted (if) and hashed as it streams into the writer's sink."""
    hold_snapshot_locks(conn, tables, lock_wait_timeout)
    argv = [str(pg_program("pg_dump")), *PG_DUMP_FLAGS, f"--snapshot={snapshot}",
            f"--lock-wait-timeout={lock_wait_timeout}"]
    env = child_env(profile, "app")
    env["PGAPPNAME"] = "studyhub backup"
    stored = writer.stored(SQL_FILE[compression.method])
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    out = stream_child_output(
        argv, env, writer, stored, compression, procs, threading.Event(),
        on_chunk=lambda raw: progress(ProgressEvent("dump", 0, 0, raw, "pg_dump (plain SQL)")))
    durations["dump (pg_dump, plain SQL)"] = round(time.monotonic() - t0, 3)
    progress(ProgressEvent("dump", 1, 1, out.raw_bytes, "pg_dump (plain SQL)"))
    return FileEntry(stored, out.out.bytes, out.out.hexdigest())


class _PlainStream:
    """The decompressed dump as a readable stream (what the importer reads), counting bytes;
    a decompression failure is one line naming the object."""

    def __init__(self, chunks: Iterator[bytes], what: str) -> None:
        self._chunks, self._what = chunks, what
        self._buf = b""
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        try:
            while not self._buf:
                self._buf = next(self._chunks)
        except StopIteration:
            return b""
        except zstandard.ZstdError as exc:
            raise BackupError(f"{self._what} does not decompress ({exc}): corrupted") from None
        data = self._buf if n is None or n < 0 else self._buf[:n]
        self._buf = self._buf[len(data):]
        self.bytes += len(data)
        return data


def restore_sql_set(source: SetSource, profile: Profile, database: str, *, jobs: int,
                    replace: bool, settings: dict[str, str], reapply_erasures: bool,
                    progress: ProgressFn, t0: float, phases: dict[str, float]) -> RestoreResult:
    """Restore a portable set (see the module docstring) into ``database``. The set's files
    were checked by the caller (sizes; a local set's sha256 too), its identity unlocked; a
    remote object's sha256 and age authentication are checked as it streams, and a failure
    there fails the load's one transaction before COMMIT. A load that fails leaves nothing (the
    staging database is dropped: one transaction, nothing to resume); a table that differs
    from the manifest keeps it for inspection (``RestoreMismatch``)."""
    manifest = source.manifest
    rel = manifest.sql_file or ""
    marker = f"studyhub restore of {source.name}"
    with admin_connection(profile) as admin:
        staging, _ = prepare_staging(admin, profile, database, marker, manifest.encoding,
                                     replace=replace)
    p0 = time.monotonic()
    try:
        create_extensions(profile, staging, manifest.extensions)
        src: Any = source.open_plain(rel)
        try:
            stream = _PlainStream(data_chunks(src, manifest.compression.method, rel),
                                  f"{rel} of {source.name}")
            load_dump(stream, profile, staging, what=f"{rel} of {source.name}", verb="restore",
                      database=database,
                      on_read=lambda: progress(ProgressEvent("restore", 0, 0, stream.bytes,
                                                             "plain SQL")))
        finally:
            src.close()
    except BaseException:
        try:
            with admin_connection(profile) as admin:
                drop_database(admin, staging)
        except psycopg.Error:
            pass  # the next restore into this name drops it (its comment says it is ours)
        raise
    phases["load (plain SQL)"] = round(time.monotonic() - p0, 3)

    p0 = time.monotonic()
    tables = [(t.schema, t.table) for t in sorted(manifest.tables, key=lambda t: -t.rows)]

    def analyze(conn: psycopg.Connection, schema: str, table: str) -> None:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))

    actual = table_checksums(profile, tables, database=staging, jobs=jobs, progress=progress,
                             after_each=analyze,
                             methods={t.qualified: t.method for t in manifest.tables})
    phases["verify + analyze"] = round(time.monotonic() - p0, 3)
    require_match(manifest, actual, staging, database)
    erasures, replaced = reapply_and_swap_in(source, profile, staging, database, replace=replace,
                                             reapply_erasures=reapply_erasures, phases=phases)
    return RestoreResult(
        source.name, profile.name, database, replaced, False, len(manifest.tables),
        manifest.total_rows, jobs, settings, round(time.monotonic() - t0, 3), phases, [],
        erasures, actual)
