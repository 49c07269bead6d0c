"""GDPR erasure (article 17) with proof: everything about one person deleted in one transaction,
children first, verified before commit that no row in any policy table still points at them,
recorded in the erasure ledger. The commands around it (``run_erase``, which also names the
places outside the database it could not clean, and ``run_reapply``, which reaches forks) are
in ``studyhub.ops.erasure``: they need the backups and the cluster, which themselves need the
ledger here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import psycopg

from studyhub.db.privacy_policy import POLICY, TablePolicy
from studyhub.errors import RefusedError
from studyhub.ops.privacy.graph import load_graph
from studyhub.ops.privacy.ledger import LEDGER_TABLE, ledger_present
from studyhub.ops.privacy.pseudonym import PseudonymKey
from studyhub.ops.privacy.rows import (
    DEFAULT_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT,
    DryRunDone,
    ErasureError,
    check_person_args,
    database_name,
    delete_person_rows,
    find_person,
    lock_timeout_interval,
    remaining_rows,
    require_idle,
    set_local,
    set_person,
    with_retries,
)
from studyhub.ops.queries import load


@dataclass
@dataclass
class PlaceNotCleaned:
    """A place outside the database that may still hold the erased person."""

    kind: str  # server-log | wal | base-backup | fork | backup-set | export
    location: str  # a directory, or the provider's service
    holds: str  # what of the person it may hold
    kept: str  # for how long
    action: str  # what the operator does about it
    items: list[str] = field(default_factory=list)  # log files, backups, forks, exports by name


@dataclass
class ErasureResult:
    database: str
    user_id: UUID
    student_id: UUID | None
    pseudonym: str
    dry_run: bool
    rows_by_table: dict[str, int]  # deleted (dry run: would be deleted), children first
    rows_total: int
    verified: bool  # no row in any policy table points at the person any more (before commit)
    attempts: int
    duration_s: float
    erased_at: datetime | None = None
    rolled_back: bool = False  # a rehearsal: everything done and verified, then rolled back
    # Where the person may still be that this could not clean (given a profile; not on dry runs)
    not_cleaned: list[PlaceNotCleaned] = field(default_factory=list)


def erase_person(conn: psycopg.Connection, key: PseudonymKey, *,
                 student_id: str | UUID | None = None, email: str | None = None,
                 dry_run: bool = False, rehearse: bool = False,
                 lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                 attempts: int = DEFAULT_ATTEMPTS, policy: dict[str, TablePolicy] = POLICY) -> ErasureResult:
    """Delete everything about one person in one transaction, children first; verify before
    commit that nothing in any policy table still points at them; record them in the ledger.
    A dry run counts the same rows and changes nothing; a rehearsal (benchmarks, drills) does
    and verifies everything, then rolls back. ``not_cleaned`` stays empty here:
    ``ops.erasure.run_erase`` fills it (it needs the backups and forks, which sit above)."""
    started = time.monotonic()
    check_person_args(student_id, email)
    timeout = lock_timeout_interval(lock_timeout)
    require_idle(conn)

    def run(attempt: int, stage: list[str]) -> ErasureResult:
        with conn.transaction():
            set_local(conn, "lock_timeout", timeout)
            graph = load_graph(conn, policy)
            graph.require_complete("erase")
            if not ledger_present(conn):
                raise RefusedError(f"refusing to erase: the erasure ledger {LEDGER_TABLE} is "
                                   f"missing (run: studyhub migrate up); nothing was changed")
            person = find_person(conn, student_id=student_id, email=email)
            set_person(conn, person.user_id, person.student_id)
            pseudonym = key.pseudonym("user", person.user_id)
            counts = delete_person_rows(conn, graph, dry_run=dry_run, stage=stage)
            total = sum(counts.values())
            erased_at = None
            if not dry_run:
                stage[0] = "verifying"
                left = remaining_rows(conn, graph)
                if left:
                    raise ErasureError(
                        "verification failed: rows still point at the person in "
                        + ", ".join(f"{t} ({n})" for t, n in left.items())
                        + "; rolled back, nothing was changed")
                erased_at = conn.execute("SELECT now()").fetchone()[0]
                stage[0] = f"recording in {LEDGER_TABLE}"
                conn.execute(load("add_erasure_ledger_entry"), {
                    "user_id": person.user_id, "student_id": person.student_id,
                    "pseudonym": pseudonym, "erased_at": erased_at, "rows_deleted": total})
            result = ErasureResult(database_name(conn), person.user_id, person.student_id,
                                   pseudonym, dry_run, counts, total, not dry_run, attempt, 0.0,
                                   erased_at, rolled_back=dry_run or rehearse)
            if dry_run or rehearse:
                raise DryRunDone(result)  # leaves the block: rolled back
        return result

    result = with_retries(attempts, "erasure", run)
    result.duration_s = round(time.monotonic() - started, 3)
    return result
