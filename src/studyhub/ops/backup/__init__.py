"""Verified logical backups and restores (the runbook's "Manual Backup" and "Restore from
Backup", made trustworthy): ``from studyhub.ops import backup``, then ``backup.create_backup``,
``backup.restore_backup`` … — the names below are the package's public surface; code outside it
imports nothing else (tests may import modules to test their internals).

create (``create.py``, files written by ``dump.py``, streams in ``streams.py``)
    One REPEATABLE READ snapshot; the schema and sequence values by ``pg_dump --snapshot``,
    every table's rows as binary COPY (``--jobs`` at a time, compressed as they stream), every
    table's row count and checksum (``checksums.py``) from the same snapshot. Written under a
    ``.partial-`` name, checked against its manifest, fsynced and renamed only then.
restore (``restore.py``; the staging database in ``staging.py``, the archive's contents in
``toc.py``, the parallel scheduler in ``schedule.py``)
    Always into a new database, renamed to its final name only once every table's count and
    checksum matches the manifest and the erasure ledger is re-applied; resumes a failed run.
portable sets (``sql_set.py``)
    ``create --format sql``: one plain SQL dump by pg_dump from the same snapshot, streamed
    through zstd and age into the target; restored through the importer below, or by hand
    with ``age -d | zstd -d | psql``.
import (``import_sql.py``)
    A runbook-style plain ``.sql[.gz]`` dump, statement by statement through PostgreSQL's
    parser, in one transaction as the app role; no psql, nothing beyond the new database.
the set on disk (``setformat.py``) and retention (``retention.py``)
    Manifest, names, listing, file verification; grandfather-father-son pruning per target.
targets (``store.py``; one set written and read in ``setio.py``; S3 in ``s3.py``)
    A local directory or an S3-compatible bucket and prefix (``s3://BUCKET/PREFIX``):
    ``list_target_sets``, ``restore_set``, ``verify_set``, ``open_target``. Table streams go
    from COPY through compression and encryption into multipart uploads; the manifest last.
encryption (``crypto.py``: age via pyrage) and signing (``signing.py``: Ed25519)
    Sets encrypted to the profile's age recipients (remote: always, unless refused
    explicitly); manifests signed by the backup host's key and checked against the
    profile's ``verify_key``; ``keygen`` writes either key.
restore drills (``drill.py``; a profile's targets and newest set in ``targets.py``)
    ``backup drill`` restores the newest set of a target into a scratch database on the
    local cluster, compares every table, drops it, and records the result in the source's
    ``ops.backup_drills``.

Mutating entry points audit themselves (``backup.create``, ``backup.restore``,
``backup.import``, ``backup.prune``, ``backup.keygen``, ``backup.drill``: one line whether
they succeed or fail) and restore and import refuse a profile that allows no change
(``Profile.require_changes_allowed``).
Subprocesses get every connection setting from ``connect.child_env``: their argv carries only
flags, paths and SQL without secrets. Dumps never go through the transaction pooler.
"""

from __future__ import annotations

from studyhub.ops.backup.checksums import compare_tables, list_tables, table_checksums
from studyhub.ops.backup.create import BackupResult, create_backup
from studyhub.ops.backup.drill import (
    DrillRecord,
    DrillResult,
    DrillsUnavailable,
    DrillTable,
    drill_backup,
    last_drills,
    recent_drills,
)
from studyhub.ops.backup.import_sql import ImportResult, import_plain_dump
from studyhub.ops.backup.finish import RestoreMismatch, RestoreResult
from studyhub.ops.backup.restore import (
    VerifyResult,
    restore_backup,
    restore_set,
    verify_backup,
    verify_set,
)
from studyhub.ops.backup.retention import PruneDecision, PrunePlan, apply_prune, prune_plan
from studyhub.ops.backup.schedule import RestoreStep
from studyhub.ops.backup.upload import memory_bound
from studyhub.ops.backup.sql_set import parse_set_format
from studyhub.ops.backup.setformat import (
    FORMAT_VERSION,
    MANIFEST,
    PARTIAL_PREFIX,
    SET_FORMATS,
    BackupError,
    BackupSetInfo,
    Compression,
    FileEntry,
    Manifest,
    Problem,
    TableChecksum,
    TableFile,
    default_backup_dir,
    list_sets,
    partial_writer_pid,
    read_manifest,
    resolve_set,
    set_name,
)
from studyhub.ops.backup.setio import SetSource
from studyhub.ops.backup.signing import KeyResult, keygen
from studyhub.ops.backup.store import (
    DEFAULT_ABANDONED_AFTER_H,
    LocalTarget,
    RemoteTarget,
    Target,
    list_target_sets,
    open_source,
    open_target,
)
from studyhub.ops.backup.streams import DEFAULT_COMPRESSION, parse_compression
from studyhub.ops.backup.targets import backup_targets, newest_set, set_time
from studyhub.ops.backup.workers import DEFAULT_JOBS, ProgressEvent, ProgressFn

__all__ = [
    # create, restore, verify, import
    "create_backup", "BackupResult", "restore_backup", "RestoreResult", "RestoreStep",
    "verify_backup", "VerifyResult", "import_plain_dump", "ImportResult", "RestoreMismatch",
    "DEFAULT_JOBS", "DEFAULT_COMPRESSION", "parse_compression", "ProgressEvent", "ProgressFn",
    "SET_FORMATS", "parse_set_format",
    # checksums
    "table_checksums", "compare_tables", "list_tables",
    # the set on disk
    "BackupError", "Manifest", "Compression", "FileEntry", "TableFile", "TableChecksum",
    "Problem", "BackupSetInfo", "FORMAT_VERSION", "MANIFEST", "PARTIAL_PREFIX",
    "default_backup_dir", "set_name", "resolve_set", "read_manifest", "list_sets",
    "partial_writer_pid",
    # retention
    "prune_plan", "apply_prune", "PrunePlan", "PruneDecision",
    # targets (local directories, object storage), keys
    "Target", "LocalTarget", "RemoteTarget", "SetSource", "open_target", "open_source",
    "list_target_sets", "restore_set", "verify_set", "DEFAULT_ABANDONED_AFTER_H",
    "keygen", "KeyResult", "memory_bound",
    # targets and restore drills
    "backup_targets", "newest_set", "set_time", "drill_backup", "DrillResult", "DrillTable",
    "DrillRecord", "DrillsUnavailable", "recent_drills", "last_drills",
]
