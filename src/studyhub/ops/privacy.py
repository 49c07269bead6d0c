"""GDPR access/portability export, erasure with proof, and the erasure ledger that makes erasure
survive a restore (the runbook's "Data Operations", without its gaps).

Every function takes a psycopg connection as the app role (owner of the tables) and returns a
dataclass. Which tables to read or delete comes from ``privacy_graph`` (catalog + policy), so a
table added later is either covered or makes these functions refuse.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from studyhub.atomic_file import write_atomically
from studyhub.connect import ConnectError, connect
from studyhub.db.privacy_policy import POLICY, ROOTS, TablePolicy
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.privacy_graph import (
    PersonalTable,
    PolicyError,  # noqa: F401  (re-exported: callers catch privacy.PolicyError)
    PrivacyGraph,
    count_sql,
    delete_sql,
    describe_conditions,
    load_graph,
    lock_sql,
    remaining_sql,
    set_person,
    short_name,
    table_ident,
    where_sql,
)
from studyhub.ops.privacy_outside import PlaceNotCleaned, places_not_cleaned
from studyhub.ops.pseudonym import PseudonymKey
from studyhub.ops.queries import load
from studyhub.profiles import Profile

EXPORT_FORMAT = "studyhub.personal-data-export"
EXPORT_VERSION = 1
LEDGER_TABLE = "ops.erasure_ledger"
DEFAULT_LOCK_TIMEOUT = "2s"
DEFAULT_ATTEMPTS = 3
ZIP_LEVEL = 1  # deflate's fastest level: 4x faster than 6 on exports, files ~25% larger
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
             psycopg.errors.SerializationFailure)


class ErasureError(StudyhubError):
    """The erasure did not happen; the transaction was rolled back."""


class PersonNotFound(StudyhubError):
    """No such student or account."""


# ----------------------------------------------------------------------------------- the person

@dataclass(frozen=True)
class Person:
    user_id: UUID
    student_id: UUID | None


def parse_uuid(value: str, what: str = "student id") -> UUID:
    try:
        return UUID(str(value).strip())
    except ValueError:
        raise StudyhubError(f"malformed {what} {value!r}: expected a UUID such as "
                            f"3f2b9c1e-8a4d-4f6b-9c2e-1d5a7b8c9e0f") from None


def check_person_args(student_id: str | UUID | None, email: str | None) -> None:
    """Exactly one of the two, well-formed (checked before connecting)."""
    if student_id and email:
        raise StudyhubError("give either --student or --email, not both")
    if not student_id and not email:
        raise StudyhubError("say whose data: --student UUID or --email ADDRESS")
    if student_id:
        parse_uuid(str(student_id))
    elif "@" not in str(email):
        raise StudyhubError("malformed --email: expected an address with an @")


def find_person(conn: psycopg.Connection, *, student_id: str | UUID | None = None,
                email: str | None = None) -> Person:
    """The account and learner ids; errors never repeat the email."""
    check_person_args(student_id, email)
    if student_id:
        sid = parse_uuid(str(student_id))
        row = conn.execute(load("get_person_by_student_id"), {"student_id": sid}).fetchone()
        if row is None:
            raise PersonNotFound(f"no student with id {sid}; nothing was changed")
    else:
        row = conn.execute(load("get_person_by_email"), {"email": email}).fetchone()
        if row is None:
            raise PersonNotFound("no account has the email given with --email; "
                                 "nothing was changed")
    return Person(row[0], row[1])


def _require_idle(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise StudyhubError("the connection is inside a transaction; privacy operations run "
                            "their own (commit or roll back first)")


def _database(conn: psycopg.Connection) -> str:
    return conn.info.dbname


def _schema_revision(conn: psycopg.Connection) -> str:
    try:
        with conn.transaction():  # savepoint: a database without alembic_version is fine
            rows = conn.execute(load("get_schema_revision")).fetchall()
    except psycopg.errors.UndefinedTable:
        return "unknown"
    return ",".join(r[0] for r in rows) or "base"


def _set_local(conn: psycopg.Connection, name: str, value: str) -> None:
    conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _interval(value: str) -> str:
    return parse_timeout(value, what="lock timeout", max_s=60)


# -------------------------------------------------------------------------------------- policy

@dataclass
class PolicyRow:
    table: str
    status: str  # erase | keep | unclassified | absent
    exported: bool
    selects: str  # how the person's rows are found, or why the table is kept
    foreign_keys: list[str] = field(default_factory=list)


@dataclass
class PolicyReport:
    database: str
    complete: bool
    tables: list[PolicyRow]
    erase_order: list[str]
    problems: list[str]


def policy_report(conn: psycopg.Connection, policy: dict[str, TablePolicy] = POLICY
                  ) -> PolicyReport:
    """The personal-data graph of this database checked against the policy (catalog only:
    works as the ops role)."""
    graph = load_graph(conn, policy)
    rows: list[PolicyRow] = []
    for name, table in graph.tables.items():
        how = describe_conditions(table.select)
        if table.policy.action == "keep":
            how = f"kept: {table.policy.reason}"
        rows.append(PolicyRow(short_name(name), table.policy.action, table.policy.export, how,
                              [fk.describe() for fk in table.foreign_keys]))
    for name, pol in policy.items():
        if name not in graph.tables and name not in graph.absent:
            rows.append(PolicyRow(short_name(name), pol.action, False,
                                  f"kept: {pol.reason}" if pol.reason else "-"))
    for f in graph.unclassified:
        rows.append(PolicyRow(short_name(f.table), "unclassified", False,
                              f"no policy ({f.via})"))
    for name in graph.absent:
        rows.append(PolicyRow(short_name(name), "absent", False, "not in this database"))
    return PolicyReport(_database(conn), graph.complete, rows,
                        [short_name(n) for n in graph.erase_order], graph.problems)


# -------------------------------------------------------------------------------------- export

@dataclass
class ExportedFile:
    name: str
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass
class ExportResult:
    path: str
    database: str
    user_id: UUID
    student_id: UUID | None
    exported_at: datetime
    schema_revision: str
    rows_by_table: dict[str, int]
    files: list[ExportedFile]
    zip_bytes: int
    duration_s: float


class _HashingWriter:
    """Buffers small writes (COPY yields a row at a time) into ~1 MiB blocks for the zip
    stream, counting bytes and hashing as it goes. Call ``flush()`` before closing."""

    BLOCK = 1 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0
        self._buf = bytearray()

    def write(self, data: bytes | str | memoryview) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._buf += data
        if len(self._buf) >= self.BLOCK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.raw.write(self._buf)
            self.sha.update(self._buf)
            self.bytes += len(self._buf)
            self._buf = bytearray()


def _label_keys(graph: PrivacyGraph, table: PersonalTable) -> list[tuple[str, Any]]:
    """(name, foreign key) for each key of ``table`` pointing at a reference table with labels
    (``subject_id`` → ``subject``)."""
    out = []
    taken = set(table.info.column_names)
    for fk in graph.all_foreign_keys:
        if fk.child != table.name or fk.parent not in graph.references:
            continue
        base = fk.child_columns[0]
        name = base[:-3] if len(fk.child_columns) == 1 and base.endswith("_id") else fk.name
        if name in taken:
            name = fk.name
        taken.add(name)
        out.append((name, fk))
    return out


def _label_lookup(fk, columns: Iterable[str], alias: str, build: str) -> sql.Composable:
    """A scalar sub-select on the reference table: one column, or a JSON object of several."""
    cols = list(columns)
    r = f"{alias}_ref"
    if build == "json":
        value = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier(r, c)) for c in cols))
    else:
        value = sql.Identifier(r, cols[0])
    match = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(r, p), sql.Identifier(alias, c))
        for c, p in zip(fk.child_columns, fk.parent_columns))
    return sql.SQL("(SELECT {} FROM {} AS {} WHERE {})").format(
        value, table_ident(fk.parent), sql.Identifier(r), match)


def _order_by(table: PersonalTable, alias: str) -> sql.Composable:
    cols = table.info.primary_key or table.export_columns[:1]
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in cols)


def _json_row(graph: PrivacyGraph, table: PersonalTable, alias: str,
              depth: int = 0) -> sql.Composable:
    """One row of ``table`` (alias ``alias``) as a JSON object: exported columns in order,
    reference labels as small objects, nested children as arrays."""
    items: list[sql.Composable] = [
        sql.SQL("{} AS {}").format(sql.Identifier(alias, c), sql.Identifier(c))
        for c in table.export_columns
    ]
    for name, fk in _label_keys(graph, table):
        items.append(sql.SQL("{} AS {}").format(
            _label_lookup(fk, graph.references[fk.parent], alias, "json"), sql.Identifier(name)))
    for child in graph.exported():
        if child.policy.nest_under != table.name:
            continue
        fk = next(k for k in child.foreign_keys if k.parent == table.name and not k.nullable)
        c = f"c{depth + 1}"
        join = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c, cc), sql.Identifier(alias, pc))
            for cc, pc in zip(fk.child_columns, fk.parent_columns))
        items.append(sql.SQL(
            "coalesce((SELECT json_agg({} ORDER BY {}) FROM {} AS {} WHERE {} AND {}), "
            "'[]'::json) AS {}").format(
            _json_row(graph, child, c, depth + 1), _order_by(child, c), table_ident(child.name),
            sql.Identifier(c), join, where_sql(child.name, child.select, c),
            sql.Identifier(child.policy.json_key or short_name(child.name))))
    return sql.SQL("(SELECT row_to_json(x) FROM (SELECT {}) AS x)").format(
        sql.SQL(", ").join(items))


def _json_query(graph: PrivacyGraph, table: PersonalTable) -> sql.Composed:
    return sql.SQL("SELECT {}::text FROM {} AS t WHERE {} ORDER BY {}").format(
        _json_row(graph, table, "t"), table_ident(table.name), where_sql(table.name, table.select),
        _order_by(table, "t"))


def _csv_query(graph: PrivacyGraph, table: PersonalTable) -> sql.Composed:
    items: list[sql.Composable] = [sql.Identifier("t", c) for c in table.export_columns]
    for name, fk in _label_keys(graph, table):
        for col in graph.references[fk.parent]:
            items.append(sql.SQL("{} AS {}").format(_label_lookup(fk, [col], "t", "scalar"),
                                                   sql.Identifier(f"{name}_{col}")))
    return sql.SQL(
        "COPY (SELECT {} FROM {} AS t WHERE {} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER)"
    ).format(sql.SQL(", ").join(items), table_ident(table.name),
             where_sql(table.name, table.select), _order_by(table, "t"))


def _zip_info(name: str, when: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = ZIP_LEVEL  # 3.11/3.12 spelling; 3.13 calls it compress_level
    info.external_attr = 0o100600 << 16  # a regular file, owner read/write only, when unpacked
    return info


def _csv_name(table: str) -> str:
    return f"csv/{short_name(table)}.csv"


def _readme(graph: PrivacyGraph, result_tables: dict[str, int], exported_at: datetime) -> str:
    lines = [
        "StudyHub: a copy of your personal data",
        "=" * 38,
        "",
        f"Made on {exported_at:%Y-%m-%d %H:%M} UTC from one consistent snapshot of our database.",
        "It contains every row we hold about you, in two machine-readable forms:",
        "",
        "personal_data.json",
        "    Everything in one JSON document. 'user' is your account, 'student' your learner",
        "    profile; the other keys are lists of rows (reviews sit inside their flashcard).",
        "    Times are ISO 8601 in UTC. Subjects are shown by code and name.",
        "",
        "csv/<table>.csv",
        "    The same rows, one CSV file per table (UTF-8, comma-separated, header row).",
        "",
    ]
    for table in graph.exported():
        lines.append(f"    {_csv_name(table.name)} ({result_tables.get(table.name, 0)} rows)")
        lines.append(f"        {table.policy.description}")
        if table.policy.exclude_columns:
            lines.append(f"        Not included: {', '.join(table.policy.exclude_columns)}.")
    lines += [
        "",
        "manifest.json",
        "    Row counts, the size and SHA-256 checksum of every file, the time of the export and",
        "    the version of our database schema, so you can check nothing is missing or altered.",
        "",
        "Your rights (GDPR articles 15-22): you may ask us to correct this data, to erase it, or",
        "to send it to another service. Contact the StudyHub privacy team.",
        "",
    ]
    return "\n".join(lines)


def export_person(conn: psycopg.Connection, out: Path, *, student_id: str | UUID | None = None,
                  email: str | None = None, policy: dict[str, TablePolicy] = POLICY
                  ) -> ExportResult:
    """Everything held about one person, from one REPEATABLE READ READ ONLY snapshot, written
    atomically to ``out`` (a 0600 zip: JSON document, one CSV per table, manifest, README)."""
    started = time.monotonic()
    check_person_args(student_id, email)
    out = Path(out).absolute()
    if out.exists():
        raise StudyhubError(f"{out} already exists; choose another name (nothing was written)")
    _require_idle(conn)
    saved = (conn.isolation_level, conn.read_only)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            _set_local(conn, "TimeZone", "UTC")
            _set_local(conn, "DateStyle", "ISO, YMD")
            _set_local(conn, "IntervalStyle", "iso_8601")
            graph = load_graph(conn, policy)
            graph.require_complete("export")
            person = find_person(conn, student_id=student_id, email=email)
            set_person(conn, person.user_id, person.student_id)
            exported_at = conn.execute("SELECT now()").fetchone()[0].astimezone(timezone.utc)
            revision = _schema_revision(conn)
            files: list[ExportedFile] = []
            rows: dict[str, int] = {}

            def write_zip(f: BinaryIO) -> None:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED,
                                     compresslevel=ZIP_LEVEL) as zf:
                    _write_json(zf, conn, graph, exported_at, revision, files)
                    for table in graph.exported():
                        name = _csv_name(table.name)
                        with zf.open(_zip_info(name, exported_at), "w",
                                     force_zip64=True) as raw:
                            w = _HashingWriter(raw)
                            cur = conn.cursor()
                            with cur.copy(_csv_query(graph, table)) as copy:
                                for chunk in copy:
                                    w.write(chunk)
                            w.flush()
                            rows[table.name] = cur.rowcount
                        files.append(ExportedFile(name, w.bytes, w.sha.hexdigest(),
                                                  cur.rowcount))
                    readme = _readme(graph, rows, exported_at).encode()
                    zf.writestr(_zip_info("README.txt", exported_at), readme)
                    files.append(ExportedFile("README.txt", len(readme),
                                              hashlib.sha256(readme).hexdigest()))
                    manifest = {
                        "format": EXPORT_FORMAT,
                        "version": EXPORT_VERSION,
                        "exported_at": exported_at.isoformat(),
                        "schema_revision": revision,
                        "database": _database(conn),
                        "user_id": str(person.user_id),
                        "student_id": str(person.student_id) if person.student_id else None,
                        "rows_by_table": {short_name(t): n for t, n in rows.items()},
                        "files": [vars(x) for x in files],
                        "note": "sha256 and bytes are of each file as stored in this zip, "
                                "uncompressed; manifest.json itself is not listed",
                    }
                    zf.writestr(_zip_info("manifest.json", exported_at),
                                json.dumps(manifest, indent=2) + "\n")

            write_atomically(out, write_zip)
    finally:
        conn.isolation_level, conn.read_only = saved
    return ExportResult(str(out), _database(conn), person.user_id, person.student_id, exported_at,
                        revision, {short_name(t): n for t, n in rows.items()}, files,
                        out.stat().st_size, round(time.monotonic() - started, 3))


def _write_json(zf: zipfile.ZipFile, conn: psycopg.Connection, graph: PrivacyGraph,
                exported_at: datetime, revision: str, files: list[ExportedFile]) -> None:
    name = "personal_data.json"
    with zf.open(_zip_info(name, exported_at), "w", force_zip64=True) as raw:
        w = _HashingWriter(raw)
        w.write("{\n")
        w.write(f'"format": {json.dumps(EXPORT_FORMAT)},\n"version": {EXPORT_VERSION},\n')
        w.write(f'"exported_at": {json.dumps(exported_at.isoformat())},\n')
        w.write(f'"schema_revision": {json.dumps(revision)}')
        for table in graph.exported():
            if table.policy.nest_under:
                continue
            key = table.policy.json_key or short_name(table.name)
            w.write(f",\n{json.dumps(key)}: ")
            cur = conn.cursor()
            cur.execute(_json_query(graph, table))
            if table.is_root:
                row = cur.fetchone()
                w.write(row[0] if row else "null")
                continue
            w.write("[")
            first = True
            while batch := cur.fetchmany(2000):
                for (text,) in batch:
                    w.write(("\n" if first else ",\n") + text)
                    first = False
            w.write("\n]" if not first else "]")
        w.write("\n}\n")
        w.flush()
    files.append(ExportedFile(name, w.bytes, w.sha.hexdigest()))


# --------------------------------------------------------------------------------------- erase

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


@dataclass
class LedgerEntry:
    """An erased person, as the ledger keeps them: ids to find their rows in a restored backup,
    a keyed pseudonym to match audit lines, no email and no name."""

    user_id: UUID
    student_id: UUID | None
    pseudonym: str
    erased_at: datetime
    rows_deleted: int


def _delete_person_rows(conn: psycopg.Connection, graph: PrivacyGraph, *, dry_run: bool,
                        stage: list[str]) -> dict[str, int]:
    """Lock the person's root rows (so nothing new can be attached meanwhile), then delete (or
    count) their rows table by table, children first."""
    counts: dict[str, int] = {}
    if not dry_run:
        for root in ROOTS:
            if root in graph.tables:
                stage[0] = f"locking {root}"
                conn.execute(lock_sql(root, graph.tables[root].select))
    for name in graph.erase_order:
        table = graph.tables[name]
        stage[0] = f"{'counting' if dry_run else 'deleting'} {name}"
        if dry_run:
            counts[short_name(name)] = conn.execute(count_sql(name, table.select)).fetchone()[0]
        else:
            counts[short_name(name)] = conn.execute(delete_sql(name, table.select)).rowcount
    return counts


def _remaining_rows(conn: psycopg.Connection, graph: PrivacyGraph) -> dict[str, int]:
    """Rows in any policy table that still point at the person (must all be zero): one
    statement, one indexed count per way a row could point at them."""
    tables = [(name, t.verify) for name, t in graph.tables.items()]
    counts = conn.execute(remaining_sql(tables)).fetchone()
    return {short_name(name): n for (name, _), n in zip(tables, counts) if n}


def _ledger_present(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()[0]


def _with_retries(attempts: int, what: str, run):
    """Run ``run(attempt, stage)`` (one transaction) again after a lock timeout, deadlock or
    serialization failure, with a short backoff; give up after ``attempts`` tries."""
    stage = ["starting"]
    for attempt in range(1, attempts + 1):
        try:
            return run(attempt, stage)
        except _DryRunDone as done:
            return done.result
        except RETRYABLE as exc:
            kind = {"55P03": "lock timeout", "40P01": "deadlock"}.get(exc.sqlstate or "",
                                                                       "serialization failure")
            if attempt == attempts:
                raise ErasureError(
                    f"{what} gave up after {attempts} attempt(s): {kind} while {stage[0]} "
                    f"(another transaction holds a conflicting lock); rolled back, nothing was "
                    f"changed") from None
            time.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


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
    timeout = _interval(lock_timeout)
    _require_idle(conn)

    def run(attempt: int, stage: list[str]) -> ErasureResult:
        with conn.transaction():
            _set_local(conn, "lock_timeout", timeout)
            graph = load_graph(conn, policy)
            graph.require_complete("erase")
            if not _ledger_present(conn):
                raise RefusedError(f"refusing to erase: the erasure ledger {LEDGER_TABLE} is "
                                   f"missing (run: studyhub migrate up); nothing was changed")
            person = find_person(conn, student_id=student_id, email=email)
            set_person(conn, person.user_id, person.student_id)
            pseudonym = key.pseudonym("user", person.user_id)
            counts = _delete_person_rows(conn, graph, dry_run=dry_run, stage=stage)
            total = sum(counts.values())
            erased_at = None
            if not dry_run:
                stage[0] = "verifying"
                left = _remaining_rows(conn, graph)
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
            result = ErasureResult(_database(conn), person.user_id, person.student_id, pseudonym,
                                   dry_run, counts, total, not dry_run, attempt, 0.0, erased_at,
                                   rolled_back=dry_run or rehearse)
            if dry_run or rehearse:
                raise _DryRunDone(result)  # leaves the block: rolled back
        return result

    result = _with_retries(attempts, "erasure", run)
    result.duration_s = round(time.monotonic() - started, 3)
    if profile is not None and not result.rolled_back:
        assert result.erased_at is not None
        result.not_cleaned = places_not_cleaned(conn, profile, database=result.database,
                                                pseudonym=result.pseudonym,
                                                erased_at=result.erased_at)
    return result


class _DryRunDone(Exception):
    """Raised inside a dry run's transaction so that it is rolled back; carries the result."""

    def __init__(self, result: Any) -> None:
        self.result = result


# -------------------------------------------------------------------------------------- ledger

def erasure_ledger(conn: psycopg.Connection) -> list[LedgerEntry]:
    """The erased people recorded in this database (empty if it has no ledger table)."""
    was_idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        if not _ledger_present(conn):
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
        if not _ledger_present(conn):
            return ErasureAudit(_database(conn), False)
        rows = conn.execute(load("get_erasures_by_month")).fetchall()
    finally:
        if was_idle and not conn.autocommit:
            conn.rollback()
    return ErasureAudit(
        _database(conn), True, sum(r[1] for r in rows), sum(r[2] for r in rows),
        min((r[3] for r in rows), default=None), max((r[4] for r in rows), default=None),
        [ErasureMonth(r[0], r[1], r[2]) for r in rows])


def _entry_to_json(e: LedgerEntry) -> dict[str, Any]:
    return {"user_id": str(e.user_id),
            "student_id": str(e.student_id) if e.student_id else None,
            "pseudonym": e.pseudonym, "erased_at": e.erased_at.isoformat(),
            "rows_deleted": e.rows_deleted}


def write_ledger_file(entries: Iterable[LedgerEntry], path: Path) -> Path:
    """The ledger as JSON lines (one entry per line), written atomically with mode 0600 and
    replacing an older copy: keep it beside the backups."""
    data = "".join(json.dumps(_entry_to_json(e), sort_keys=True) + "\n" for e in entries)
    return write_atomically(Path(path), lambda f: f.write(data.encode()), overwrite=True)


def read_ledger_file(path: Path) -> list[LedgerEntry]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyhubError(f"ledger file {path} not found") from None
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
    timeout = _interval(lock_timeout)
    _require_idle(conn)

    def run(attempt: int, stage: list[str]) -> ReapplyResult:
        with conn.transaction():
            _set_local(conn, "lock_timeout", timeout)
            graph = load_graph(conn, policy)
            graph.require_complete("re-apply erasures")
            people: list[ReappliedErasure] = []
            for e in entries:
                set_person(conn, e.user_id, e.student_id)
                counts = _delete_person_rows(conn, graph, dry_run=dry_run, stage=stage)
                if not dry_run:
                    stage[0] = "verifying"
                    left = _remaining_rows(conn, graph)
                    if left:
                        raise ErasureError(
                            f"verification failed for {e.pseudonym}: rows still point at the "
                            "person in " + ", ".join(f"{t} ({n})" for t, n in left.items())
                            + "; rolled back, nothing was changed")
                total = sum(counts.values())
                people.append(ReappliedErasure(e.user_id, e.student_id, e.pseudonym, total > 0,
                                               counts, total))
            recorded = 0
            if not dry_run and entries and _ledger_present(conn):
                stage[0] = f"recording in {LEDGER_TABLE}"
                for e in entries:
                    recorded += conn.execute(load("add_erasure_ledger_entry"), {
                        "user_id": e.user_id, "student_id": e.student_id,
                        "pseudonym": e.pseudonym, "erased_at": e.erased_at,
                        "rows_deleted": e.rows_deleted}).rowcount
            result = ReapplyResult(_database(conn), dry_run, people,
                                   sum(1 for p in people if p.present),
                                   sum(p.rows_total for p in people), recorded, not dry_run,
                                   attempt)
            if dry_run:
                raise _DryRunDone(result)
        return result

    result = _with_retries(attempts, "re-applying erasures", run)
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


def reapply_erasure_ledger(profile: Profile, database: str, backup_dir: Path,
                           live_database: str | None, *,
                           live_profile: Profile | None = None) -> ErasureReapply:
    """Union of the ledgers of the live database, the backup directory's file and the restored
    database itself, re-applied to the restored database (idempotent, one transaction). The
    live database is on ``live_profile`` when given (a point-in-time fork's source), else on
    ``profile``."""
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
    path = backup_dir / LEDGER_FILE
    if path.exists():
        entries = read_ledger_file(path)
        sources[f"file {path}"] = len(entries)
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
