"""Restoring a backup set, always into a new (staging) database that is renamed to its final
name only after the restore has been verified (``staging.py``); and ``verify``, which with
``--restore`` restores into a scratch database and compares.

The schema (pre-data) is restored by pg_restore in one transaction; then, for format 2, the
scheduler (``schedule.py``) on ``--jobs`` connections loads each table, builds its indexes and
keys as soon as it is loaded, its foreign keys once the tables they join are ready, checksums
and ANALYZEs it; sequence values and the rest by ``pg_restore -j N``. Format 1 sets go through
``pg_restore -j N`` for data and post-data. Then every table's count and checksum is compared
with the manifest and the privacy erasure ledger re-applied. A restore that failed part-way
resumes where it stopped when run again (the staging database's comment says how far it got).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import child_env, connect
from studyhub.errors import RefusedError
from studyhub.local.proc import pg_program
from studyhub.ops.backup.checksums import table_checksums
from studyhub.ops.backup.finish import RestoreResult, reapply_and_swap_in, require_match
from studyhub.ops.backup.schedule import RestoreScheduler, RestoreStep
from studyhub.ops.backup.session import RESTORE_SETTINGS, refuse_pooler
from studyhub.ops.backup.setformat import BackupError, Manifest, Problem, TableChecksum
from studyhub.ops.backup.sql_set import restore_sql_set
from studyhub.ops.backup.setio import LocalSetSource, SetSource, verified_record
from studyhub.ops.backup.staging import (
    admin_connection,
    create_extensions,
    drop_database,
    prepare_staging,
    set_database_comment,
    staging_name,
)
from studyhub.ops.backup.store import Target, open_source
from studyhub.ops.backup.streams import FifoFeeder
from studyhub.ops.backup.toc import (
    ITEM_RE,
    SERIAL_RE,
    TocEntry,
    is_extension_entry,
    post_data_statements,
    read_toc,
    write_list,
)
from studyhub.ops.backup.workers import (
    DEFAULT_JOBS,
    ProgressEvent,
    ProgressFn,
    no_progress,
    stderr_tail,
)
from studyhub.ops.queries import load
from studyhub.profiles import BackupConfig, Profile, backup_config


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
class RestoreItem:
    """One item pg_restore worked on, from its --verbose messages."""

    desc: str
    tag: str
    start: float
    end: float | None = None


def run_pg_restore(profile: Profile, database: str, archive: Path, list_file: Path,
                   sections: list[str], jobs: int, settings: dict[str, str],
                   single_transaction: bool, progress: ProgressFn, total_items: int,
                   items: dict[int, RestoreItem]) -> None:
    """pg_restore of the items in ``list_file`` (``--use-list``) into ``database``, as the app
    role with the restore's session settings; each item's start and end go into ``items``."""
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
    last_serial: RestoreItem | None = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            lines.append(line)
            if len(lines) > 200:
                del lines[:100]
            now = time.monotonic()
            m = ITEM_RE.search(line)
            if m:
                dump_id = int(m.group(2))
                if m.group(1) == "launching":
                    items[dump_id] = RestoreItem(m.group(3), m.group(4), now)
                elif dump_id in items:
                    items[dump_id].end = now
                    done += 1
                    progress(ProgressEvent("restore", done, total_items, message=f"{m.group(3)} {m.group(4)}"))
                continue
            s = SERIAL_RE.search(line)
            if s and jobs == 1 and not single_transaction:
                if last_serial:
                    last_serial.end = now
                    done += 1
                    progress(ProgressEvent("restore", done, total_items, message=last_serial.tag))
                desc = s.group(1) or "TABLE DATA"
                last_serial = RestoreItem(desc, s.group(2) or s.group(3), now)
                items[-len(items) - 1] = last_serial
        rc = proc.wait()
        if last_serial and last_serial.end is None:
            last_serial.end = time.monotonic()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        reason = f"killed by signal {-rc}" if rc < 0 else stderr_tail(lines, 2)
        raise BackupError(f"pg_restore failed: {reason}")


def remaining_items(conn: psycopg.Connection, entries: list[TocEntry],
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
            has_rows = conn.execute(sql.SQL(load("get_table_has_rows")).format(
                table=sql.Identifier(e.schema, e.tag))).fetchone()[0]
            if has_rows:
                continue
        elif e.desc == "INDEX":
            if conn.execute(load("get_relation_exists"),
                            {"name": sql.Identifier(e.schema, e.tag).as_string(conn)}).fetchone()[0]:
                continue
        elif e.desc in ("CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER"):
            table, _, name = e.tag.partition(" ")
            query = "get_trigger_exists" if e.desc == "TRIGGER" else "get_constraint_exists"
            found = conn.execute(load(query), {
                "table": sql.Identifier(e.schema, table).as_string(conn), "name": name,
            }).fetchone()[0]
            if found:
                continue
        remaining.append(e)
    conn.rollback()
    return remaining


def restore_backup(
    set_dir: Path | SetSource,
    profile: Profile,
    database: str,
    *,
    jobs: int = DEFAULT_JOBS,
    replace: bool = False,
    settings: dict[str, str] | None = None,
    reapply_erasures: bool = True,
    verify_files_first: bool = True,
    progress: ProgressFn = no_progress,
    config: BackupConfig | None = None,
    identity_file: Path | None = None,
) -> RestoreResult:
    """Restore ``set_dir`` (a set directory, or any target's set: ``restore_set``) into
    ``database`` on ``profile`` (see the module docstring). An encrypted set needs
    ``identity_file`` (else the profile's). Refused where the profile allows no change;
    audited as ``backup.restore`` (database, set, replaced, resumed, tables, rows, erasures),
    a failure too."""
    profile.require_changes_allowed(
        f"restore {set_dir.name} into {database}"
        + (" replacing the existing database (kept, renamed)" if replace else ""))
    with audited("backup.restore", profile.name, database=database, set=set_dir.name) as line:
        refuse_pooler(profile)
        source = _source(set_dir, profile, config)
        line["target"] = source.location
        result = _restore(source, profile, database, jobs=jobs, replace=replace,
                          settings=settings, reapply_erasures=reapply_erasures,
                          verify_files_first=verify_files_first, progress=progress,
                          identity_file=identity_file or _config(profile, config).identity_file)
        line.update(replaced=result.replaced, resumed=result.resumed, tables=result.tables,
                    rows=result.rows,
                    erasures=result.erasures.status if result.erasures else None)
    return result


def restore_set(target: str | Path | Target | None, name: str, profile: Profile, database: str,
                *, config: BackupConfig | None = None, identity_file: Path | None = None,
                **kwargs: Any) -> RestoreResult:
    """Restore the set ``name`` of ``target`` (``s3://BUCKET/PREFIX``, a directory, or None:
    the profile's configured target, else the backup directory) — ``restore_backup`` for any
    target; ``kwargs`` as there (jobs, replace, reapply_erasures, progress …)."""
    config = _config(profile, config)
    source = open_source(name, target, config)
    return restore_backup(source, profile, database, config=config,
                          identity_file=identity_file, **kwargs)


def _config(profile: Profile, config: BackupConfig | None) -> BackupConfig:
    return config if config is not None else backup_config(profile.name)


def _source(ref: Path | SetSource, profile: Profile, config: BackupConfig | None) -> SetSource:
    if isinstance(ref, SetSource):
        return ref
    return LocalSetSource(Path(ref), _config(profile, config))


def _restore(source: SetSource, profile: Profile, database: str, *, jobs: int, replace: bool,
             settings: dict[str, str] | None, reapply_erasures: bool, verify_files_first: bool,
             progress: ProgressFn, identity_file: Path | None = None) -> RestoreResult:
    t0 = time.monotonic()
    refuse_pooler(profile)
    if jobs < 1:
        raise BackupError("--jobs must be at least 1")
    settings = {**RESTORE_SETTINGS, **(settings or {})}
    manifest = source.manifest
    source.unlock(identity_file)  # a wrong key is refused before anything is done
    phases: dict[str, float] = {}
    if verify_files_first:
        progress(ProgressEvent("verify files", 0, len(manifest.files)))
        p0 = time.monotonic()
        problems = source.size_problems()  # remote: sizes now, sha256 while each streams
        phases["check files"] = round(time.monotonic() - p0, 3)
        if problems:
            raise BackupError(f"backup set {source.name} is damaged, not restoring: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if manifest.format == "sql":  # one plain SQL dump: its own load (sql_set.py)
        return restore_sql_set(source, profile, database, jobs=jobs, replace=replace,
                               settings=settings, reapply_erasures=reapply_erasures,
                               progress=progress, t0=t0, phases=phases)
    p0 = time.monotonic()
    with source.schema_dir() as archive:  # remote/encrypted: fetched before anything is made
        if source.encrypted or not isinstance(source, LocalSetSource):
            phases["fetch schema"] = round(time.monotonic() - p0, 3)
        return _restore_into(source, archive, profile, database, jobs=jobs, replace=replace,
                             settings=settings, reapply_erasures=reapply_erasures,
                             progress=progress, t0=t0, phases=phases)


def _restore_into(source: SetSource, archive: Path, profile: Profile, database: str, *,
                  jobs: int, replace: bool, settings: dict[str, str], reapply_erasures: bool,
                  progress: ProgressFn, t0: float, phases: dict[str, float]) -> RestoreResult:
    manifest = source.manifest
    marker = f"studyhub restore of {source.name}"
    with admin_connection(profile) as admin:
        if admin.execute(load("get_server_has_lz4")).fetchone()[0]:
            settings.setdefault("default_toast_compression", "lz4")
        if manifest.server_major:
            here = int(admin.execute("SHOW server_version_num").fetchone()[0]) // 10000
            if here < manifest.server_major:
                raise RefusedError(
                    f"backup set {source.name} holds binary COPY data from PostgreSQL "
                    f"{manifest.server_major}; it restores onto PostgreSQL "
                    f"{manifest.server_major} or newer, and {profile.name} runs {here}")
        staging, resumed = prepare_staging(admin, profile, database, marker, manifest.encoding,
                                           replace=replace, resume_at="schema done")
    entries = [e for e in read_toc(archive)]
    keep = [e for e in entries if not is_extension_entry(e)]
    ext_schemas = {x["schema"] for x in manifest.extensions if x["schema"] != "public"}
    keep = [e for e in keep if not (e.desc == "SCHEMA" and e.tag in ext_schemas)]
    work = Path(tempfile.mkdtemp(prefix="studyhub-restore-list-"))
    items: dict[int, RestoreItem] = {}
    data_steps: list[RestoreStep] = []
    actual: list[TableChecksum] = []
    try:
        if not resumed:
            p0 = time.monotonic()
            progress(ProgressEvent("schema", 0, 1, message="extensions and schema"))
            create_extensions(profile, staging, manifest.extensions)
            run_pg_restore(profile, staging, archive, write_list(work / "pre.list", keep),
                           ["pre-data"], 1, settings, True, progress, 1, {})
            with admin_connection(profile) as admin:
                set_database_comment(admin, staging, f"{marker}: schema done")
            phases["schema"] = round(time.monotonic() - p0, 3)
            todo = keep
        else:
            with connect(profile, "app", database=staging, application_name="studyhub restore") as conn:
                todo = remaining_items(conn, keep, manifest)
        if manifest.format_version >= 2:
            p0 = time.monotonic()
            post, session = post_data_statements(archive, todo, work)
            data_steps, actual, data_s = RestoreScheduler(
                profile, staging, source, manifest, post, session, jobs, settings,
                progress).run()
            phases["data, indexes, keys, FKs, verify (wall)"] = round(time.monotonic() - p0, 3)
            phases["  of which until all data was loaded"] = data_s
            done_ids = {p.entry.dump_id for p in post}
            todo = [e for e in todo if e.dump_id not in done_ids]
        p0 = time.monotonic()
        n_items = len([e for e in todo if e.desc not in ("COMMENT", "ACL")])
        feeder = (FifoFeeder(archive) if manifest.compression.method == "zstd"
                  and manifest.format_version == 1 else None)
        try:
            if feeder:
                feeder.start()
            run_pg_restore(profile, staging, feeder.dir if feeder else archive,
                           write_list(work / "rest.list", todo), ["data", "post-data"],
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
    require_match(manifest, actual, staging, database)
    erasures, replaced = reapply_and_swap_in(source, profile, staging, database, replace=replace,
                                             reapply_erasures=reapply_erasures, phases=phases)
    slowest = sorted(steps, key=lambda s: -s.duration_s)[:8]
    return RestoreResult(
        source.name, profile.name, database, replaced, resumed, len(manifest.tables),
        manifest.total_rows, jobs, settings, round(time.monotonic() - t0, 3), phases, slowest,
        erasures, actual)


def verify_backup(set_dir: Path | SetSource, *, restore: bool = False,
                  local_profile: Profile | None = None, jobs: int = DEFAULT_JOBS,
                  progress: ProgressFn = no_progress, config: BackupConfig | None = None,
                  identity_file: Path | None = None) -> VerifyResult:
    """Check every file against the manifest: its size, and its sha256 — each object read
    once (a remote set's are downloaded and hashed, never kept); with ``restore``, also
    restore into a scratch database on the local cluster (a remote set's objects are hashed
    while they stream into it, not downloaded twice), compare every table's rows and
    checksum, drop it. ``config``: the profile's backup settings (verify_key, identity)."""
    t0 = time.monotonic()
    source = set_dir if isinstance(set_dir, SetSource) else LocalSetSource(Path(set_dir), config)
    manifest = source.manifest
    durations: dict[str, float] = {}
    progress(ProgressEvent("verify files", 0, len(manifest.files)))
    found = source.size_problems()  # a local set: sizes and sha256 of every file
    check_s = time.monotonic() - t0
    remote = not isinstance(source, LocalSetSource)
    restored = False
    if restore and not found:
        if local_profile is None or not local_profile.is_local:
            raise RefusedError("verify --restore restores into a scratch database on the local "
                               "cluster only (start it with: studyhub local up)")
        source.unlock(identity_file or (config.identity_file if config else None))
        scratch = f"studyhub_verify_{os.getpid()}_{int(time.time())}"
        try:
            result = _restore(source, local_profile, scratch, jobs=jobs, replace=False,
                              settings=None, reapply_erasures=False, verify_files_first=False,
                              progress=progress)
            durations.update({f"restore: {k}": v for k, v in result.phases_s.items()})
            restored = True
        except BackupError as exc:
            found.append(Problem(source.name, str(exc)))
        finally:
            with admin_connection(local_profile) as admin:
                drop_database(admin, scratch)
                drop_database(admin, staging_name(scratch))
    if remote:  # every object the restore did not read (or all of them): read once, hashed
        h0 = time.monotonic()
        found += source.hash_all(skip=source.hashed | {p.path for p in found})
        check_s += time.monotonic() - h0
    durations["check files"] = round(check_s, 3)
    problems = [p.issue if p.path == source.name else str(p) for p in found]
    ok = not problems
    result = VerifyResult(source.name, source.location, ok, len(manifest.files),
                          manifest.total_bytes, problems, restored,
                          len(manifest.tables) if restored else 0,
                          round(time.monotonic() - t0, 3), durations)
    source.record_verified(verified_record(ok, restored, len(problems)))
    return result


def verify_set(target: str | Path | Target | None, name: str, *,
               config: BackupConfig | None = None, **kwargs: Any) -> VerifyResult:
    """``verify_backup`` of the set ``name`` of any target (None: the configured one, else
    the backup directory)."""
    return verify_backup(open_source(name, target, config), config=config, **kwargs)
