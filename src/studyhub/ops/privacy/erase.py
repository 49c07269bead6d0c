"""GDPR erasure (article 17) with proof: everything about one person deleted in one transaction,
children first, verified before commit that no row in any policy table still points at them,
recorded in the erasure ledger; then what it could not clean (``outside``). Also the command
that erases again, in a restored database or a fork, the people of the ledger.

``run_erase`` and ``run_reapply`` are the commands: profile → rule check → connection → work →
audit line (written however the work ends).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

import psycopg

from studyhub.audit import audited
from studyhub.connect import connect
from studyhub.db.privacy_policy import POLICY, TablePolicy
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import cluster
from studyhub.ops.privacy.graph import load_graph
from studyhub.ops.privacy.ledger import (
    LEDGER_TABLE,
    ReapplyResult,
    erasure_ledger,
    ledger_present,
    merge_ledgers,
    read_ledger_file,
    reapply_erasures,
)
from studyhub.ops.privacy.outside import PlaceNotCleaned, places_not_cleaned
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
from studyhub.profiles import Profile


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
                 attempts: int = DEFAULT_ATTEMPTS, policy: dict[str, TablePolicy] = POLICY,
                 profile: Profile | None = None) -> ErasureResult:
    """Delete everything about one person in one transaction, children first; verify before
    commit that nothing in any policy table still points at them; record them in the ledger.
    A dry run counts the same rows and changes nothing; a rehearsal (benchmarks, drills) does
    and verifies everything, then rolls back. Given the ``profile`` ``conn`` belongs to, the
    result also names the places outside the database that may still hold the person
    (``not_cleaned``: server log, WAL, backups, forks, exports)."""
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
    if profile is not None and not result.rolled_back:
        assert result.erased_at is not None
        result.not_cleaned = places_not_cleaned(conn, profile, database=result.database,
                                                pseudonym=result.pseudonym,
                                                erased_at=result.erased_at)
    return result


def run_erase(profile: Profile, key: PseudonymKey, *, student_id: str | UUID | None = None,
              email: str | None = None, database: str | None = None, dry_run: bool = False,
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> ErasureResult:
    """``studyhub privacy erase`` on ``profile``. A dry run (the plan) counts the rows and
    changes nothing. A real run checks that the profile allows changes, erases
    (``erase_person``, naming what it could not clean) and writes the audit line
    ``privacy.erase``, naming the person by keyed pseudonym — also when it fails, the error
    then by type only (a message may name the person)."""
    check_person_args(student_id, email)
    if dry_run:
        with connect(profile, "app", database=database,
                     application_name="studyhub privacy erase") as conn:
            return erase_person(conn, key, student_id=student_id, email=email, dry_run=True,
                                lock_timeout=lock_timeout)
    profile.require_changes_allowed("erase a person")
    with audited("privacy.erase", profile.name, error_text=False) as line:
        with connect(profile, "app", database=database,
                     application_name="studyhub privacy erase") as conn:
            line["database"] = database_name(conn)
            result = erase_person(conn, key, student_id=student_id, email=email,
                                  lock_timeout=lock_timeout, profile=profile)
        line.update(database=result.database, person=result.pseudonym,
                    rows_by_table=result.rows_by_table, rows_total=result.rows_total,
                    attempts=result.attempts, duration_s=result.duration_s,
                    not_cleaned=[p.kind for p in result.not_cleaned])
    return result


def run_reapply(profile: Profile, *, ledger_file: Path | None = None, fork: str | None = None,
                database: str | None = None, dry_run: bool = False,
                lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> ReapplyResult:
    """``studyhub privacy reapply-erasures``: erase again, in ``database`` (e.g. a restored
    backup) or in the running point-in-time fork ``fork`` of the profile's cluster, everyone
    in the ledger — ``ledger_file``, else the ledger of the profile's own database, merged with
    the target's own — who is present there. A dry run (the plan) changes nothing. A real run
    checks that the profile allows changes and writes the audit line
    ``privacy.reapply_erasures`` (also when it fails)."""
    if fork and database:
        raise StudyhubError("give either --fork or --database, not both")
    if not dry_run:
        profile.require_changes_allowed("re-apply erasures")
    audit = nullcontext({}) if dry_run else audited("privacy.reapply_erasures", profile.name,
                                                     fork=fork)
    with audit as line:
        target = cluster.fork_target(profile, fork) if fork else profile
        if ledger_file:
            source = read_ledger_file(ledger_file)
        else:
            with connect(profile, "app", application_name="studyhub privacy") as conn:
                source = erasure_ledger(conn)
        with connect(target, "app", database=database,
                     application_name="studyhub privacy reapply") as conn:
            line["database"] = database_name(conn)
            entries = merge_ledgers(source, erasure_ledger(conn))
            result = reapply_erasures(conn, entries, dry_run=dry_run, lock_timeout=lock_timeout)
        line.update(database=result.database,
                    people=[p.pseudonym for p in result.people if p.present],
                    rows_total=result.rows_total, ledger_recorded=result.ledger_recorded,
                    duration_s=result.duration_s)
    return result
