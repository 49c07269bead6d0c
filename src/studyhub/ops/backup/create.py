"""Creating a backup set (format 3; ``format_version=1`` still writes the oldest format).

One REPEATABLE READ transaction exports its snapshot and holds ACCESS SHARE locks on every
table. From that snapshot: ``pg_dump -Fd --snapshot`` with every table's data excluded (by exact
name) writes the schema and sequence values; one ``psql`` per table, ``--jobs`` at a time,
biggest first, runs ``COPY … TO STDOUT (FORMAT binary)`` and a thread streams its output
through zstd (or gzip, or nothing) — and age encryption, when the set is encrypted — into
``data/<schema>.<table>.bin.zst[.age]``; another connection counts every table's rows and
checksums its content.

The target is a directory (the set written under a ``.partial-`` name, checked against its
manifest, fsynced and renamed only then) or object storage (every table streamed into a
multipart upload, the schema staged in a temporary directory and uploaded, the manifest
uploaded last): ``setio.py``. Remote sets are encrypted unless that is refused explicitly
(``encrypt=False``); local ones when the profile has recipients (or ``encrypt=True``).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from studyhub import __version__ as tool_version
from studyhub.audit import audited
from studyhub.connect import connect
from studyhub.ops.privacy import ledger
from studyhub.ops.backup.checksums import list_tables, pin_checksum_settings, table_checksums
from studyhub.ops.backup.dump import dump_tables_binary, pattern_literal, run_pg_dump
from studyhub.ops.backup.upload import memory_bound
from studyhub.ops.backup.sql_set import DUMP_FORMAT, dump_plain_sql, parse_set_format
from studyhub.ops.backup.session import hold_snapshot_locks, refuse_pooler
from studyhub.ops.backup.crypto import METHOD, fingerprint, parse_recipients
from studyhub.ops.backup.setformat import (
    DUMP_DIR,
    FORMAT_VERSION,
    LEDGER,
    BackupError,
    Compression,
    FileEntry,
    Manifest,
    TableChecksum,
    TableFile,
    set_name,
)
from studyhub.ops.backup.setio import SetWriter
from studyhub.ops.backup.signing import key_fingerprint, load_signing_key, public_text
from studyhub.ops.backup.store import Target, open_target
from studyhub.ops.backup.streams import DEFAULT_COMPRESSION
from studyhub.ops.backup.workers import (
    DEFAULT_JOBS,
    ProgressFn,
    no_progress,
    tool_version_line,
)
from studyhub.ops.queries import load
from studyhub.profiles import BackupConfig, Endpoint, Profile, backup_config


@dataclass
class BackupResult:
    name: str
    path: str  # the set's directory, or s3://BUCKET/PREFIX/NAME
    profile: str
    database: str
    tables: int
    rows: int
    bytes: int
    compression: str
    jobs: int
    duration_s: float
    durations_s: dict[str, float]
    target: str = ""  # where: a directory or s3://BUCKET/PREFIX
    encrypted_for: list[str] | None = None  # recipients' fingerprints; None: in clear
    signed_by: str | None = None  # the signing key's fingerprint
    memory_bound_bytes: int | None = None  # uploads: parts held at most (docs/backup.md)
    format: str = "native"  # native | sql (one plain SQL dump by pg_dump: portable)


def choose_recipients(target: Target, config: BackupConfig, encrypt: bool | None) -> list[Any] | None:
    """Who a new set is encrypted for: remote targets always (``encrypt=False`` is the only
    way out, and must be said); local directories when the profile has recipients (or
    ``encrypt_local``/``encrypt`` say so). None: in clear."""
    recipients = parse_recipients(config.recipients) if config.recipients else []
    if encrypt is False:
        return None
    if target.remote and not recipients:
        raise BackupError(
            f"refusing to upload an unencrypted backup to {target.url}: add age recipients to "
            f"[{config.profile}.backup] recipients (`studyhub backup keygen` makes a key), or "
            "pass --no-encrypt to store every student's data there in clear")
    if encrypt is None and not target.remote:
        encrypt = config.encrypt_local if config.encrypt_local is not None else bool(recipients)
    if (encrypt or target.remote) and not recipients:
        raise BackupError(f"cannot encrypt: [{config.profile}.backup] has no recipients")
    return recipients if (encrypt or target.remote) else None



def create_backup(
    profile: Profile,
    *,
    out_dir: Path | None = None,
    target: str | Path | Target | None = None,
    config: BackupConfig | None = None,
    encrypt: bool | None = None,
    jobs: int = DEFAULT_JOBS,
    compression: Compression = DEFAULT_COMPRESSION,
    lock_wait_timeout: str = "60s",
    progress: ProgressFn = no_progress,
    format_version: int = FORMAT_VERSION,
    set_format: str = "native",
) -> BackupResult:
    """Write one verified backup set of the profile's app database (see module docstring)
    into ``target`` (``s3://BUCKET/PREFIX``, ``file:///PATH``, a directory; ``out_dir`` is a
    directory too), else the profile's configured target (``config.target``), else the backup
    directory. ``config``: the profile's [backup] settings (default: read for the profile).
    ``encrypt``: None = the default for the target, False = in clear (say so).
    ``format_version=1`` writes the oldest format (pg_dump's own text-format table data, local
    and in clear only), kept so that sets of that format stay tested. ``set_format="sql"``
    writes a portable set: one plain SQL dump by pg_dump instead of the schema archive and
    the binary COPY files (``sql_set.py``; ``jobs`` then only sizes the upload streams).
    Audited as ``backup.create`` (database, set, format, target, encrypted, tables, rows,
    bytes), a failure too.
    Reads the database only, so it is not refused on a read-only or implicitly chosen
    production profile."""
    if format_version not in (1, FORMAT_VERSION):
        raise BackupError(f"cannot write backup set format {format_version} (1 or {FORMAT_VERSION})")
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    set_format = parse_set_format(set_format)
    if set_format == "sql" and format_version != FORMAT_VERSION:
        raise BackupError(f"sql sets are written in format {FORMAT_VERSION} only")
    if out_dir is not None and target is not None:
        raise BackupError("give a directory or a target, not both")
    config = config if config is not None else backup_config(profile.name)
    where = open_target(out_dir if out_dir is not None else target, config)
    with audited("backup.create", profile.name, database=profile.database,
                 target=where.url, format=set_format) as line:
        refuse_pooler(profile)
        recipients = choose_recipients(where, config, encrypt)
        line["encrypted"] = recipients is not None
        if format_version == 1 and (recipients or where.remote):
            raise BackupError("format 1 sets are written to a local directory in clear only")
        signing_key = load_signing_key(config.signing_key_file) if config.signing_key_file else None
        where.check_writable()  # a missing bucket or refused credentials: before any snapshot
        result = _write_set(profile, where, config, recipients, signing_key, jobs,
                            compression, lock_wait_timeout, progress, format_version,
                            set_format, line)
        line.update(database=result.database, set=result.name, tables=result.tables,
                    rows=result.rows, bytes=result.bytes)
    return result


def _write_set(profile: Profile, target: Target, config: BackupConfig,
               recipients: list[Any] | None, signing_key: Any, jobs: int,
               compression: Compression, lock_wait_timeout: str, progress: ProgressFn,
               format_version: int, set_format: str, line: dict[str, Any]) -> BackupResult:
    t0 = time.monotonic()
    started = datetime.now(timezone.utc)
    ep = profile.endpoint("app")
    name = set_name(profile.name, ep.database, started)
    line["set"] = name
    durations: dict[str, float] = {}
    encryption = ({"method": METHOD, "recipients": [fingerprint(r) for r in config.recipients]}
                  if recipients else None)
    signed_by = key_fingerprint(public_text(signing_key.public_key())) if signing_key else None
    with target.writer(name, recipients, signing_key, jobs) as writer:
        manifest = _dump_one_snapshot(profile, ep, writer, target, started, jobs, compression,
                                      lock_wait_timeout, progress, format_version, set_format,
                                      durations)
        manifest.encryption, manifest.signed_by = encryption, signed_by
        f0 = time.monotonic()
        location = writer.finish(manifest)
    durations["fsync_verify" if not target.remote else "finish"] = round(time.monotonic() - f0, 3)
    total = time.monotonic() - t0
    return BackupResult(name, location, profile.name, manifest.database,
                        len(manifest.tables), manifest.total_rows, manifest.total_bytes,
                        str(compression), jobs, round(total, 3), durations, target.url,
                        encryption["recipients"] if encryption else None, signed_by,
                        memory_bound(config, jobs) if target.remote else None,
                        manifest.format)


def _dump_one_snapshot(profile: Profile, ep: Endpoint, writer: SetWriter, target: Target,
                       started: datetime, jobs: int, compression: Compression,
                       lock_wait_timeout: str, progress: ProgressFn, format_version: int,
                       set_format: str, durations: dict[str, float]) -> Manifest:
    """Export a snapshot, write every file of the set through ``writer`` from it (and checksum
    every table from it, on another connection), and describe the result as a manifest."""
    partial = writer.staging
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
        ledger_entries, ledger_blob = _ledger(profile, conn, target)

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
        sql_file = None
        if set_format == "sql":
            entry = dump_plain_sql(profile, conn, snapshot, tables, writer, compression,
                                   lock_wait_timeout, progress, durations)
            written, sql_file = {entry.path: entry}, entry.path
        elif format_version == 1:
            written, dump_times = run_pg_dump(profile, snapshot, partial / DUMP_DIR, jobs,
                                              compression, len(tables), progress,
                                              lock_wait_timeout)
            durations.update(dump_times)
        else:
            written, table_files = _create_v2_parts(
                profile, conn, snapshot, tables, writer, jobs, compression, encoding,
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
    stored = [*written.values(), *writer.store_staged(others)]
    ledger_file = None
    if format_version != 1:
        entry = writer.store_bytes(LEDGER, ledger_blob)
        stored.append(entry)
        ledger_file = entry.path
    files = sorted(stored, key=lambda f: f.path)
    finished = datetime.now(timezone.utc)
    return Manifest(
        format_version=format_version, tool="studyhub", tool_version=tool_version,
        pg_dump_version=pg_dump_version, server_version=server_version,
        profile=profile.name, host=ep.host, port=ep.port, database=database,
        encoding=encoding, direct=not ep.via_pooler, alembic_revision=revision,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"), snapshot=snapshot,
        compression=compression, jobs=jobs,
        dump_format=(DUMP_FORMAT if sql_file else "directory" if format_version == 1
                     else "directory without table data + binary COPY per table"),
        extensions=extensions, tables=sums["tables"], files=files,
        durations_s=durations, erasure_ledger_entries=ledger_entries,
        server_major=_major(server_version) if format_version != 1 and not sql_file else None,
        table_files=table_files, ledger_file=ledger_file, format=set_format, sql_file=sql_file,
    )


def _ledger(profile: Profile, conn: psycopg.Connection, target: Target) -> tuple[int, bytes]:
    """The erasure ledger the set carries: the live one, merged (for a local directory) with
    the file kept beside the sets, which is updated too (it survives the live database)."""
    if target.ledger_dir is not None:
        count = ledger.save_ledger_beside_backups(profile, conn, target.ledger_dir)
        path = target.ledger_dir / ledger.LEDGER_FILE
        entries = ledger.read_ledger_file(path) if path.exists() else []
        entries = ledger.merge_ledgers(entries, ledger.erasure_ledger(conn))
        return count, ledger.ledger_jsonl(entries)
    entries = ledger.erasure_ledger(conn)
    return len(entries), ledger.ledger_jsonl(entries)


def _major(server_version: str) -> int:
    """15 from '15.18 (Debian 15.18-0+deb12u1)'."""
    m = re.match(r"(\d+)", server_version)
    if not m:
        raise BackupError(f"cannot read a major version from server version {server_version!r}")
    return int(m.group(1))


def _create_v2_parts(profile: Profile, conn: psycopg.Connection, snapshot: str,
                     tables: list[tuple[str, str]], writer: SetWriter, jobs: int,
                     compression: Compression, encoding: str, lock_wait_timeout: str,
                     progress: ProgressFn, durations: dict[str, float],
                     ) -> tuple[dict[str, FileEntry], list[TableFile]]:
    """Format 2: schema and sequence values by ``pg_dump --snapshot`` with every table's data
    excluded (by exact name: a pattern would also drop SEQUENCE SET), beside it every table's
    rows as binary COPY from the same snapshot. The snapshot's own transaction holds ACCESS
    SHARE locks on every table until the end, as pg_dump does (no DROP/ALTER meanwhile)."""
    hold_snapshot_locks(conn, tables, lock_wait_timeout)
    columns = {(r[0], r[1]): list(r[2])
               for r in conn.execute(load("get_backup_table_columns")).fetchall()}
    schema_result: dict[str, Any] = {}

    def run_schema() -> None:
        try:
            schema_result["ok"] = run_pg_dump(
                profile, snapshot, writer.staging / DUMP_DIR, 1, Compression("none"), 0, no_progress,
                lock_wait_timeout,
                [f"--exclude-table-data={pattern_literal(*t)}" for t in tables])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            schema_result["error"] = exc

    schema = threading.Thread(target=run_schema, daemon=True)
    schema.start()
    try:
        entries, table_files, data_s = dump_tables_binary(
            profile, conn, snapshot, tables, columns, writer, jobs, compression, encoding,
            progress)
    finally:
        schema.join()
    if "error" in schema_result:
        raise schema_result["error"]
    durations["schema (pg_dump)"] = schema_result["ok"][1]["dump"]
    durations["data (binary COPY)"] = data_s
    return {e.path: e for e in entries}, table_files
