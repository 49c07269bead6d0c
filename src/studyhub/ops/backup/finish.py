"""The end of every restore, whatever the set's format: the restored (staging) database
compared table by table with the manifest (a difference keeps it for inspection and leaves
the target untouched), the erasure ledger re-applied, and only then the rename into place
(``staging.swap_in``); and what a restore returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from studyhub.ops.backup.checksums import compare_tables
from studyhub.ops.backup.schedule import RestoreStep
from studyhub.ops.backup.setformat import BackupError, Manifest, Problem, TableChecksum
from studyhub.ops.backup.setio import SetSource
from studyhub.ops.backup.staging import swap_in
from studyhub.ops.privacy import ledger
from studyhub.profiles import Profile


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
    erasures: ledger.ErasureReapply | None
    # every table's rows and checksum as restored (each equal to the manifest's)
    verified_tables: list[TableChecksum] = field(default_factory=list)


class RestoreMismatch(BackupError):
    """The restored database does not match the manifest: ``problems`` names each table that
    differs, ``restored`` holds what every table came back as."""

    def __init__(self, message: str, problems: list[Problem],
                 restored: list[TableChecksum]) -> None:
        super().__init__(message)
        self.problems = problems
        self.restored = restored


def require_match(manifest: Manifest, actual: list[TableChecksum], staging: str,
                  database: str) -> None:
    """Every table's rows and checksum as restored equal to the manifest's, else
    :class:`RestoreMismatch` naming each table (and its data file, where it has one)."""
    problems = compare_tables(manifest.tables, actual)
    files_of = {f.qualified: f.path for f in manifest.table_files}
    problems = [Problem(p.path, p.issue + (f" (data file {files_of[p.path]})" if p.path in files_of else ""))
                for p in problems]
    if problems:
        raise RestoreMismatch(
            f"restored database {staging} does not match the backup: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + f"; {database} was not touched, {staging} is kept for inspection",
            problems, actual)


def reapply_and_swap_in(source: SetSource, profile: Profile, staging: str, database: str, *,
                        replace: bool, reapply_erasures: bool,
                        phases: dict[str, float]) -> tuple[ledger.ErasureReapply | None, str | None]:
    """Re-apply the union of the erasure ledgers (the live database's, the target's, the
    set's and its newer siblings', the restored database's own) to the verified staging
    database, then give it its final name. Returns the re-apply result and the name the
    replaced database was kept under."""
    erasures = None
    if reapply_erasures:
        p0 = time.monotonic()
        live = profile.database if profile.database not in (database, staging) else None
        if replace and database == profile.database:
            live = database  # the database about to be replaced still holds the newest ledger
        erasures = ledger.reapply_erasure_ledger(profile, staging, source.ledger_dir, live,
                                                 extra=source.carried_ledgers())
        phases["erasure ledger"] = round(time.monotonic() - p0, 3)
    p0 = time.monotonic()
    replaced = swap_in(profile, staging, database)
    phases["rename"] = round(time.monotonic() - p0, 3)
    return erasures, replaced
