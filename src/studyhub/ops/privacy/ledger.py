"""The erasure ledger: who was erased (ids, a keyed pseudonym, when, how many rows; no email, no
name), so that erasure survives a restore. It lives in the table ``ops.erasure_ledger`` of each
database, in a JSON-lines file kept beside the backups (``LEDGER_FILE``), and is merged from
both and re-applied to a restored database or a fork (``reapply_erasures``,
``reapply_erasure_ledger``).

The backup and cluster code import this module (and only this one of the package); nothing in
the package imports them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from studyhub.atomic_file import write_atomically
from studyhub.connect import ConnectError, connect
from studyhub.db.privacy_policy import POLICY, TablePolicy
from studyhub.errors import StudyhubError
from studyhub.ops.privacy.graph import load_graph
from studyhub.ops.privacy.rows import (
    DEFAULT_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT,
    DryRunDone,
    ErasureError,
    database_name,
    delete_person_rows,
    lock_timeout_interval,
    remaining_rows,
    require_idle,
    set_local,
    set_person,
    with_retries,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

LEDGER_TABLE = "ops.erasure_ledger"


@dataclass
class LedgerEntry:
    """An erased person, as the ledger keeps them: ids to find their rows in a restored backup,
    a keyed pseudonym to match audit lines, no email and no name."""

    user_id: UUID
    student_id: UUID | None
    pseudonym: str
    erased_at: datetime
    rows_deleted: int


def ledger_present(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()[0]


def erasure_ledger(conn: psycopg.Connection) -> list[LedgerEntry]:
    """The erased people recorded in this database (empty if it has no ledger table)."""
    was_idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        if not ledger_present(conn):
            return []
        return [LedgerEntry(*row) for row in conn.execute(load("get_erasure_ledger")).fetchall()]
    finally:
        if was_idle and not conn.autocommit:
            conn.rollback()


@dataclass
class ErasureMonth:
    month: date
    erasures: int
    rows_deleted: int


@dataclass
class ErasureAudit:
    """The erasure ledger as counts only (for dashboards and reports): how many people were
    erased, when, and how many rows went — no ids, no pseudonyms."""

    database: str
    ledger_present: bool
    erasures: int = 0
    rows_deleted: int = 0
    first_erased_at: datetime | None = None
    last_erased_at: datetime | None = None
    by_month: list[ErasureMonth] = field(default_factory=list)


def erasure_audit(conn: psycopg.Connection) -> ErasureAudit:
    """Counts from the erasure ledger (app role: only it may read the ledger)."""
    was_idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        if not ledger_present(conn):
            return ErasureAudit(database_name(conn), False)
        rows = conn.execute(load("get_erasures_by_month")).fetchall()
    finally:
        if was_idle and not conn.autocommit:
            conn.rollback()
    return ErasureAudit(
        database_name(conn), True, sum(r[1] for r in rows), sum(r[2] for r in rows),
        min((r[3] for r in rows), default=None), max((r[4] for r in rows), default=None),
        [ErasureMonth(r[0], r[1], r[2]) for r in rows])


def _entry_to_json(e: LedgerEntry) -> dict[str, Any]:
    return {"user_id": str(e.user_id),
            "student_id": str(e.student_id) if e.student_id else None,
            "pseudonym": e.pseudonym, "erased_at": e.erased_at.isoformat(),
            "rows_deleted": e.rows_deleted}


def ledger_jsonl(entries: Iterable[LedgerEntry]) -> bytes:
    """The ledger as JSON lines, one entry per line (the file's content; a backup set carries
    the same, encrypted with the set)."""
    return "".join(json.dumps(_entry_to_json(e), sort_keys=True) + "\n" for e in entries).encode()


def write_ledger_file(entries: Iterable[LedgerEntry], path: Path) -> Path:
    """The ledger as JSON lines (one entry per line), written atomically with mode 0600 and
    replacing an older copy: keep it beside the backups."""
    data = ledger_jsonl(entries)
    return write_atomically(Path(path), lambda f: f.write(data), overwrite=True)


def read_ledger_file(path: Path) -> list[LedgerEntry]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyhubError(f"ledger file {path} not found") from None
    return parse_ledger(text, str(path))


def parse_ledger(text: str, source: str) -> list[LedgerEntry]:
    """Ledger entries from JSON lines; a bad line is named by ``source`` and its number."""
    path = source
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            entries.append(LedgerEntry(
                UUID(d["user_id"]), UUID(d["student_id"]) if d.get("student_id") else None,
                str(d["pseudonym"]), datetime.fromisoformat(d["erased_at"]),
                int(d["rows_deleted"])))
        except (ValueError, KeyError, TypeError):
            raise StudyhubError(f"{path}:{lineno}: not a ledger entry") from None
    return entries


def merge_ledgers(*ledgers: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """One entry per person (the earliest), oldest first."""
    by_user: dict[UUID, LedgerEntry] = {}
    for ledger in ledgers:
        for e in ledger:
            if e.user_id not in by_user or e.erased_at < by_user[e.user_id].erased_at:
                by_user[e.user_id] = e
    return sorted(by_user.values(), key=lambda e: (e.erased_at, str(e.user_id)))


@dataclass
class ReappliedErasure:
    user_id: UUID
    student_id: UUID | None
    pseudonym: str
    present: bool  # the restored database still held rows of this person
    rows_by_table: dict[str, int]
    rows_total: int


@dataclass
class ReapplyResult:
    database: str
    dry_run: bool
    people: list[ReappliedErasure]
    people_present: int
    rows_total: int
    ledger_recorded: int  # entries added to this database's own ledger
    verified: bool
    attempts: int
    duration_s: float = 0.0


def reapply_erasures(conn: psycopg.Connection, entries: Iterable[LedgerEntry], *,
                     dry_run: bool = False, lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                     attempts: int = DEFAULT_ATTEMPTS, policy: dict[str, TablePolicy] = POLICY
                     ) -> ReapplyResult:
    """Erase again everyone in ``entries`` who is present in this database (e.g. a restored
    backup), in one transaction with the same verification, and add the entries to its own
    ledger. Idempotent: a second run finds nobody and changes nothing."""
    started = time.monotonic()
    entries = merge_ledgers(entries)
    timeout = lock_timeout_interval(lock_timeout)
    require_idle(conn)

    def run(attempt: int, stage: list[str]) -> ReapplyResult:
        with conn.transaction():
            set_local(conn, "lock_timeout", timeout)
            graph = load_graph(conn, policy)
            graph.require_complete("re-apply erasures")
            people: list[ReappliedErasure] = []
            for e in entries:
                set_person(conn, e.user_id, e.student_id)
                counts = delete_person_rows(conn, graph, dry_run=dry_run, stage=stage)
                if not dry_run:
                    stage[0] = "verifying"
                    left = remaining_rows(conn, graph)
                    if left:
                        raise ErasureError(
                            f"verification failed for {e.pseudonym}: rows still point at the "
                            "person in " + ", ".join(f"{t} ({n})" for t, n in left.items())
                            + "; rolled back, nothing was changed")
                total = sum(counts.values())
                people.append(ReappliedErasure(e.user_id, e.student_id, e.pseudonym, total > 0,
                                               counts, total))
            recorded = 0
            if not dry_run and entries and ledger_present(conn):
                stage[0] = f"recording in {LEDGER_TABLE}"
                for e in entries:
                    recorded += conn.execute(load("add_erasure_ledger_entry"), {
                        "user_id": e.user_id, "student_id": e.student_id,
                        "pseudonym": e.pseudonym, "erased_at": e.erased_at,
                        "rows_deleted": e.rows_deleted}).rowcount
            result = ReapplyResult(database_name(conn), dry_run, people,
                                   sum(1 for p in people if p.present),
                                   sum(p.rows_total for p in people), recorded, not dry_run,
                                   attempt)
            if dry_run:
                raise DryRunDone(result)
        return result

    result = with_retries(attempts, "re-applying erasures", run)
    result.duration_s = round(time.monotonic() - started, 3)
    return result


# ------------------------------------------------- the ledger beside the backups, re-applied
LEDGER_FILE = "erasure-ledger.jsonl"  # the erasure ledger kept beside the backup sets


@dataclass
class ErasureReapply:
    status: str  # reapplied | no-ledger
    entries: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    result: Any = None


def save_ledger_beside_backups(profile: Profile, conn: psycopg.Connection, backup_dir: Path) -> int:
    """Keep the live erasure ledger in the backup directory too (so a restore re-applies
    erasures even when the live database is gone). Returns the entry count."""
    path = backup_dir / LEDGER_FILE
    existing = read_ledger_file(path) if path.exists() else []
    live = erasure_ledger(conn)
    merged = merge_ledgers(existing, live)
    if len(merged) != len(existing):
        write_ledger_file(merged, path)
    return len(merged)


def reapply_erasure_ledger(profile: Profile, database: str, backup_dir: Path | None,
                           live_database: str | None, *,
                           live_profile: Profile | None = None,
                           extra: dict[str, list[LedgerEntry]] | None = None) -> ErasureReapply:
    """Union of the ledgers of the live database, the backup directory's file (when there is
    one: a remote backup target has none), ``extra`` (e.g. the ledger a backup set carries,
    by source name) and the restored database itself, re-applied to the restored database
    (idempotent, one transaction). The live database is on ``live_profile`` when given (a
    point-in-time fork's source), else on ``profile``."""
    sources: dict[str, int] = {}
    lists: list[list[Any]] = []
    if live_database:
        try:
            with connect(live_profile or profile, "app", database=live_database,
                         application_name="studyhub restore ledger") as live:
                entries = erasure_ledger(live)
            sources[f"live database {live_database}"] = len(entries)
            lists.append(entries)
        except ConnectError:
            sources[f"live database {live_database} (unreachable)"] = 0
    path = backup_dir / LEDGER_FILE if backup_dir is not None else None
    if path is not None and path.exists():
        entries = read_ledger_file(path)
        sources[f"file {path}"] = len(entries)
        lists.append(entries)
    for name, entries in (extra or {}).items():
        sources[name] = len(entries)
        lists.append(entries)
    with connect(profile, "app", database=database,
                 application_name="studyhub restore ledger") as conn:
        own = erasure_ledger(conn)
        conn.commit()
        sources["restored database"] = len(own)
        lists.append(own)
        merged = merge_ledgers(*lists)  # one entry per person
        if not merged:
            return ErasureReapply("no-ledger", 0, sources)
        result = reapply_erasures(conn, merged)
        conn.commit()
    return ErasureReapply("reapplied", len(merged), sources, result)
