"""Creating a backup set (format 2; ``format_version=1`` still writes the previous format).

One REPEATABLE READ transaction exports its snapshot and holds ACCESS SHARE locks on every
table. From that snapshot: ``pg_dump -Fd --snapshot`` with every table's data excluded (by exact
name) writes the schema and sequence values; one ``psql`` per table, ``--jobs`` at a time,
biggest first, runs ``COPY … TO STDOUT (FORMAT binary)`` and a thread streams its output
through zstd (or gzip, or nothing) into ``data/<schema>.<table>.bin.zst``; another connection
counts every table's rows and checksums its content. The set is written under a ``.partial-``
name, checked against its manifest, fsynced and renamed only then (``atomic_directory``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from studyhub import __version__ as tool_version
from studyhub.atomic_file import atomic_directory, write_json_atomically
from studyhub.audit import audited
from studyhub.connect import connect
from studyhub.ops.privacy import ledger
from studyhub.ops.backup.checksums import list_tables, pin_checksum_settings, table_checksums
from studyhub.ops.backup.dump import dump_tables_binary, pattern_literal, run_pg_dump
from studyhub.ops.backup.session import refuse_pooler
from studyhub.ops.backup.setformat import (
    DUMP_DIR,
    FORMAT_VERSION,
    MANIFEST,
    PARTIAL_PREFIX,
    BackupError,
    Compression,
    FileEntry,
    Manifest,
    TableChecksum,
    TableFile,
    check_files,
    default_backup_dir,
    hash_files,
    read_manifest,
    set_name,
)
from studyhub.ops.backup.streams import DEFAULT_COMPRESSION
from studyhub.ops.backup.workers import (
    DEFAULT_JOBS,
    ProgressFn,
    no_progress,
    tool_version_line,
)
from studyhub.ops.queries import load
from studyhub.profiles import Endpoint, Profile


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



def create_backup(
    profile: Profile,
    *,
    out_dir: Path | None = None,
    jobs: int = DEFAULT_JOBS,
    compression: Compression = DEFAULT_COMPRESSION,
    lock_wait_timeout: str = "60s",
    progress: ProgressFn = no_progress,
    format_version: int = FORMAT_VERSION,
) -> BackupResult:
    """Write one verified backup set of the profile's app database (see module docstring).
    ``format_version=1`` writes the previous format (pg_dump's own text-format table data),
    kept so that sets of that format stay tested. Audited as ``backup.create`` (database, set,
    tables, rows, bytes), a failure too. Reads the database only, so it is not refused on a
    read-only or implicitly chosen production profile."""
    if format_version not in (1, 2):
        raise BackupError(f"cannot write backup set format {format_version} (1 or 2)")
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    with audited("backup.create", profile.name, database=profile.database) as line:
        refuse_pooler(profile)
        result = _write_set(profile, (out_dir or default_backup_dir()).absolute(), jobs,
                            compression, lock_wait_timeout, progress, format_version, line)
        line.update(database=result.database, set=result.name, tables=result.tables,
                    rows=result.rows, bytes=result.bytes)
    return result


def _write_set(profile: Profile, out_dir: Path, jobs: int, compression: Compression,
               lock_wait_timeout: str, progress: ProgressFn, format_version: int,
               line: dict[str, Any]) -> BackupResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started = datetime.now(timezone.utc)
    ep = profile.endpoint("app")
    name = set_name(profile.name, ep.database, started)
    line["set"] = name
    if (out_dir / name).exists():
        raise BackupError(f"{out_dir / name} already exists (two backups in the same second)")
    durations: dict[str, float] = {}
    with atomic_directory(out_dir / name,
                          temp_name=f"{PARTIAL_PREFIX}{name}-{os.getpid()}") as partial:
        manifest = _dump_one_snapshot(profile, ep, partial, out_dir, started, jobs, compression,
                                      lock_wait_timeout, progress, format_version, durations)
        write_json_atomically(partial / MANIFEST, manifest.to_dict())
        f0 = time.monotonic()
        problems = check_files(partial, read_manifest(partial), jobs)
        if problems:
            raise BackupError(f"the new set does not match its manifest: {problems[0]}")
    durations["fsync_verify"] = round(time.monotonic() - f0, 3)  # check, fsync, rename
    total = time.monotonic() - t0
    return BackupResult(name, str(out_dir / name), profile.name, manifest.database,
                        len(manifest.tables), manifest.total_rows, manifest.total_bytes,
                        str(compression), jobs, round(total, 3), durations)


def _dump_one_snapshot(profile: Profile, ep: Endpoint, partial: Path, out_dir: Path,
                       started: datetime, jobs: int, compression: Compression,
                       lock_wait_timeout: str, progress: ProgressFn, format_version: int,
                       durations: dict[str, float]) -> Manifest:
    """Export a snapshot, write every file of the set into ``partial`` from it (and checksum
    every table from it, on another connection), and describe the result as a manifest."""
    conn = connect(profile, "app", application_name="studyhub backup")
    try:
        pin_checksum_settings(conn)
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
        ledger_entries = ledger.save_ledger_beside_backups(profile, conn, out_dir)

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
            written, dump_times = run_pg_dump(profile, snapshot, partial / DUMP_DIR, jobs,
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
    pg_dump_version = tool_version_line("pg_dump")
    others = [p for p in (partial / DUMP_DIR).rglob("*")
              if p.is_file() and str(p.relative_to(partial)) not in written]
    files = sorted([*written.values(), *hash_files(partial, others, jobs)],
                   key=lambda f: f.path)
    finished = datetime.now(timezone.utc)
    return Manifest(
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
            schema_result["ok"] = run_pg_dump(
                profile, snapshot, partial / DUMP_DIR, 1, Compression("none"), 0, no_progress,
                lock_wait_timeout,
                [f"--exclude-table-data={pattern_literal(*t)}" for t in tables])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            schema_result["error"] = exc

    schema = threading.Thread(target=run_schema, daemon=True)
    schema.start()
    try:
        entries, table_files, data_s = dump_tables_binary(
            profile, conn, snapshot, tables, columns, partial, jobs, compression, encoding,
            progress)
    finally:
        schema.join()
    if "error" in schema_result:
        raise schema_result["error"]
    durations["schema (pg_dump)"] = schema_result["ok"][1]["dump"]
    durations["data (binary COPY)"] = data_s
    return {e.path: e for e in entries}, table_files
