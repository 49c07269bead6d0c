"""``backup import``: a plain SQL dump (the runbook's ``pg_dump URL | gzip > backup.sql.gz``)
read statement by statement, each one read by PostgreSQL's own parser (pglast) and judged
before it is sent, COPY data passed through as it is, into a new database.

A dump is a program. ``backup import`` runs it in a new database, as the app role, in one
transaction that stops at the first error — and with no psql: psql would also run the
meta-commands a file may carry (``\\!`` runs a shell command as the operator, ``\\o`` and
``\\copy`` write files, ``\\connect`` goes elsewhere). ``judge`` keeps a statement inside that
transaction and that database: transaction control, and statements on roles, databases,
tablespaces, the server's configuration or files, are refused.
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import psycopg
from pglast import ast, enums
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import connect, first_line
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.privacy import ledger
from studyhub.ops.backup.session import RESTORE_SETTINGS, refuse_pooler
from studyhub.ops.backup.setformat import BackupError, default_backup_dir
from studyhub.ops.backup.staging import (
    admin_connection,
    database_comment,
    database_exists,
    database_is_empty,
    drop_database,
    set_database_comment,
    staging_name,
    swap_in,
)
from studyhub.ops.backup.workers import ProgressEvent, ProgressFn, no_progress
from studyhub.ops.space import table_sizes
from studyhub.ops.sqltext import SQLParseError, Statement, execute_extended, parse_statements
from studyhub.profiles import Profile

MAX_STATEMENT_CHARS = 64 * 1024 * 1024  # an unterminated string must not eat all memory

# pg_dump 15.14+ brackets its output with these psql meta-commands (psql's own guard against
# meta-commands in a dump); no psql reads ours, so they are left out.
RESTRICT_LINE = re.compile(r"\\(un)?restrict [A-Za-z0-9]+")

SKIP_EXTENSION = "extension (created by the admin role)"
SKIP_OWNERSHIP = "ownership (like --no-owner)"
SKIP_PRIVILEGES = "privileges (like --no-acl)"
SKIP_TRANSACTION = "BEGIN/COMMIT (the import is one transaction)"
SKIP_RESTRICT = "psql \\restrict/\\unrestrict (no psql reads the dump)"

# Statements that act beyond the new database: on the cluster's roles, databases,
# tablespaces, subscriptions, configuration, or the server's files.
_BEYOND_THE_DATABASE = (
    ast.CreatedbStmt, ast.DropdbStmt, ast.AlterDatabaseStmt, ast.AlterDatabaseSetStmt,
    ast.AlterDatabaseRefreshCollStmt, ast.CreateRoleStmt, ast.AlterRoleStmt,
    ast.AlterRoleSetStmt, ast.DropRoleStmt, ast.ReassignOwnedStmt, ast.DropOwnedStmt,
    ast.CreateTableSpaceStmt, ast.DropTableSpaceStmt, ast.AlterTableSpaceOptionsStmt,
    ast.AlterSystemStmt, ast.CreateSubscriptionStmt, ast.AlterSubscriptionStmt,
    ast.DropSubscriptionStmt, ast.LoadStmt, ast.CheckPointStmt,
)
_SHARED_OBJECTS = {"OBJECT_DATABASE", "OBJECT_ROLE", "OBJECT_TABLESPACE",
                   "OBJECT_SUBSCRIPTION"}
_TX = enums.TransactionStmtKind


class DumpError(StudyhubError):
    """The dump cannot be read as SQL (not UTF-8, a parse error, cut off inside COPY rows)."""


@dataclass(frozen=True)
class DumpItem:
    line: int  # where it starts in the dump (1-based)
    statement: Statement | None = None
    meta: str | None = None  # a psql meta-command line (backslash), not SQL


def _const_text(node: ast.Node) -> str | None:
    val = getattr(node, "val", None)
    for attr in ("sval", "ival", "boolval"):
        if val is not None and getattr(val, attr, None) is not None:
            return str(getattr(val, attr)).lower()
    return None


def judge(stmt: Statement) -> str | None:
    """None: run it. A reason (str): leave it out, counted under that reason. Raises
    RefusedError for a statement that would leave the import's transaction or database."""
    node = stmt.node
    if isinstance(node, ast.CreateExtensionStmt) or (
            isinstance(node, ast.CommentStmt) and node.objtype.name == "OBJECT_EXTENSION"):
        return SKIP_EXTENSION
    if isinstance(node, ast.AlterOwnerStmt) or (
            isinstance(node, ast.AlterTableStmt) and node.cmds and all(
                c.subtype == enums.AlterTableType.AT_ChangeOwner for c in node.cmds)):
        if getattr(node, "objectType", None) is not None and \
                node.objectType.name in _SHARED_OBJECTS:
            raise RefusedError(f"{stmt.kind} of a database, role or tablespace acts beyond the "
                               "new database")
        return SKIP_OWNERSHIP
    if isinstance(node, (ast.GrantStmt, ast.GrantRoleStmt)):
        return SKIP_PRIVILEGES
    if isinstance(node, ast.TransactionStmt):
        if node.kind in (_TX.TRANS_STMT_BEGIN, _TX.TRANS_STMT_START, _TX.TRANS_STMT_COMMIT):
            return SKIP_TRANSACTION
        raise RefusedError(f"{stmt.kind} would end or split the import's single transaction")
    if isinstance(node, _BEYOND_THE_DATABASE):
        raise RefusedError(f"{stmt.kind} acts beyond the new database")
    objtype = node.renameType if isinstance(node, ast.RenameStmt) else \
        node.objtype if isinstance(node, (ast.CommentStmt, ast.SecLabelStmt)) else None
    if objtype is not None and objtype.name in _SHARED_OBJECTS:
        raise RefusedError(f"{stmt.kind} of a database, role or tablespace acts beyond the new "
                           "database")
    if isinstance(node, ast.VariableSetStmt) and node.name:
        value = _const_text(node.args[0]) if node.args else None
        if node.name in ("role", "session_authorization"):
            raise RefusedError("SET ROLE / SESSION AUTHORIZATION: the import runs as the app "
                               "role")
        if node.name == "standard_conforming_strings" and node.args and \
                value not in ("on", "true", "yes", "1"):
            raise RefusedError("standard_conforming_strings must stay on (as pg_dump writes "
                               "it): the statements are read that way")
        if node.name == "client_encoding" and node.args and \
                value not in ("utf8", "unicode", "utf-8"):
            raise RefusedError(f"client_encoding {value}: only UTF8 dumps are imported "
                               "(pg_dump -E UTF8)")
    if isinstance(node, ast.CopyStmt):
        if node.filename is not None or node.is_program:
            raise RefusedError("COPY with a file or program reads or writes on the server")
        if not node.is_from or node.relation is None or node.options or node.whereClause:
            raise RefusedError("only COPY table (columns) FROM stdin, as pg_dump writes it, is "
                               "imported")
    return None


class PlainDump:
    """The items of a plain dump, in order: ``items()`` yields SQL statements and meta-command
    lines; after a ``COPY … FROM stdin`` statement, read its rows with ``copy_data()`` before
    asking for the next item.

    Statements are found by PostgreSQL's parser, not by hand: lines are gathered until one
    ends with a semicolon and the text parses; while the parser says the text ends inside a
    string, comment or function body, more lines are added."""

    def __init__(self, stream: IO[bytes], on_read: Callable[[], None] = lambda: None,
                 chunk_bytes: int = 1 << 20) -> None:
        self._stream, self._on_read, self._chunk_bytes = stream, on_read, chunk_bytes
        self._buf, self._pos, self._eof = b"", 0, False
        self.line = 0  # lines consumed so far

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(self._chunk_bytes)
        if not chunk:
            self._eof = True
            return False
        self._buf, self._pos = self._buf[self._pos:] + chunk, 0
        self._on_read()
        return True

    def _readline(self) -> bytes:
        while True:
            i = self._buf.find(b"\n", self._pos)
            if i >= 0:
                line, self._pos = self._buf[self._pos:i + 1], i + 1
                self.line += 1
                return line
            if not self._more():
                line, self._buf, self._pos = self._buf[self._pos:], b"", 0
                self.line += bool(line)
                return line

    def copy_data(self) -> Iterator[bytes]:
        """The rows of the COPY just read, in chunks as they are, up to its ``\\.`` line."""
        while len(self._buf) - self._pos < 3 and self._more():
            pass
        if self._buf.startswith(b"\\.\n", self._pos):  # no rows
            self._pos += 3
            self.line += 1
            return
        while True:
            end = self._buf.find(b"\n\\.\n", self._pos)
            if end >= 0:
                data, self._pos = self._buf[self._pos:end + 1], end + 4
                self.line += data.count(b"\n") + 1
                yield data
                return
            keep = max(self._pos, len(self._buf) - 3)  # "\n\." may continue in the next chunk
            data, self._pos = self._buf[self._pos:keep], keep
            self.line += data.count(b"\n")
            if data:
                yield data
            if not self._more():
                raise DumpError(f"line {self.line}: the dump ends inside COPY data "
                                    "(no \\. line)")

    def items(self) -> Iterator[DumpItem]:
        pending: list[str] = []
        size = start = 0
        while True:
            raw = self._readline()
            if not raw:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DumpError(f"line {self.line} is not UTF-8: only UTF8 dumps are "
                                    "imported (pg_dump -E UTF8)") from None
            if not pending:
                stripped = line.strip()
                if not stripped or stripped.startswith("--"):
                    continue
                if stripped.startswith("\\"):
                    yield DumpItem(self.line, meta=stripped)
                    continue
                start = self.line
            pending.append(line)
            size += len(line)
            if not line.rstrip().endswith(";"):
                if size > MAX_STATEMENT_CHARS:
                    raise DumpError(f"line {start}: a statement longer than "
                                        f"{MAX_STATEMENT_CHARS >> 20} MB (unterminated?)")
                continue
            try:
                found = parse_statements("".join(pending))
            except SQLParseError as exc:
                if exc.incomplete and size <= MAX_STATEMENT_CHARS:
                    continue  # a semicolon inside a string, comment or function body
                raise DumpError(f"line {start}: {exc.parser_message}") from None
            if found and not found[-1].terminated:
                continue  # the last semicolon was in a comment: the statement goes on
            pending, size = [], 0
            for i, stmt in enumerate(found):
                if _copy_from_stdin(stmt) and i < len(found) - 1:
                    raise DumpError(f"line {start}: COPY … FROM stdin must end its line")
                yield DumpItem(start, stmt)
        if pending:
            try:
                found = parse_statements("".join(pending))
            except SQLParseError as exc:
                raise DumpError(f"line {start}: {exc.parser_message}") from None
            for stmt in found:
                if _copy_from_stdin(stmt):
                    raise DumpError(f"line {start}: the dump ends inside COPY data")
                yield DumpItem(start, stmt)


def _copy_from_stdin(stmt: Statement) -> bool:
    node = stmt.node
    return isinstance(node, ast.CopyStmt) and node.is_from and node.filename is None \
        and not node.is_program


# ------------------------------------------------------------------------------ import
@dataclass
class ImportResult:
    file: str
    profile: str
    database: str
    tables: int
    rows: int
    table_rows: dict[str, int]
    bytes_read: int
    duration_s: float
    skipped_statements: dict[str, int]
    erasures: ledger.ErasureReapply | None


def _open_dump(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file, decompressed stream); gzip recognised by its magic bytes."""
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    return raw, (gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw)


def _create_extension_sql(node: "ast.CreateExtensionStmt") -> sql.Composed:
    """The dump's CREATE EXTENSION, for the admin role: its name and schema only, from the
    parse tree."""
    q = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(node.extname))
    schema = next((o.arg.sval for o in node.options or () if o.defname == "schema"), None)
    if schema:
        q += sql.SQL(" WITH SCHEMA {}").format(sql.Identifier(schema))
    return q


def _copy_from_stdin_sql(node: "ast.CopyStmt") -> sql.Composed:
    """The dump's ``COPY table (columns) FROM stdin``, composed from its parse tree."""
    rel = node.relation
    target = sql.Identifier(*[p for p in (rel.catalogname, rel.schemaname, rel.relname) if p])
    if not node.attlist:
        return sql.SQL("COPY {} FROM STDIN").format(target)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(sql.Identifier(c.sval) for c in node.attlist))


def load_dump(stream: IO[bytes], profile: Profile, staging: str, *, what: str, verb: str,
              database: str, on_read: Callable[[], None] = lambda: None,
              kept_note: str = "") -> dict[str, int]:
    """Run the plain dump read from ``stream`` in ``staging``: as the app role, in one
    transaction that stops at the first error, statement by statement — each read by
    PostgreSQL's parser, judged (:func:`judge`) and sent on the extended protocol, COPY rows
    as they are; CREATE EXTENSION by the admin role. Returns what was left out, by reason.
    Failures are one line naming ``what`` and the dump's line (``verb``: import or restore;
    ``database``: the name nothing was kept under); a failure of ``stream`` itself (a
    checksum or decryption that fails at its end) is raised as it is, before COMMIT."""
    skipped: dict[str, int] = {}
    dump = PlainDump(stream, on_read=on_read)
    line = 0
    try:
        with connect(profile, "admin", database=staging, autocommit=True,
                     application_name=f"studyhub {verb}") as ext_conn, \
                connect(profile, "app", database=staging, autocommit=True,
                        application_name=f"studyhub {verb}") as conn:
            for k, v in RESTORE_SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, false)", (k, v))
            with conn.transaction():
                for item in dump.items():
                    line = item.line
                    if item.statement is None:  # a psql meta-command line
                        if not RESTRICT_LINE.fullmatch(item.meta or ""):
                            raise RefusedError(
                                f"psql meta-command {(item.meta or '').split()[0]} is not SQL; "
                                "only SQL statements and COPY rows are imported, nothing else "
                                "is run")
                        skipped[SKIP_RESTRICT] = skipped.get(SKIP_RESTRICT, 0) + 1
                        continue
                    node = item.statement.node
                    reason = judge(item.statement)  # RefusedError: refuse it all
                    if reason is not None:
                        skipped[reason] = skipped.get(reason, 0) + 1
                        if isinstance(node, ast.CreateExtensionStmt):
                            ext_conn.execute(_create_extension_sql(node))
                    elif isinstance(node, ast.CopyStmt):  # FROM stdin: judge said so
                        with conn.cursor() as cur, cur.copy(_copy_from_stdin_sql(node)) as cp:
                            for chunk in dump.copy_data():
                                cp.write(chunk)
                    else:  # one statement per message: the server refuses a second one
                        execute_extended(conn, item.statement.text)
    except RefusedError as exc:
        raise RefusedError(f"refusing to {verb} {what}: line {line}: {exc} (nothing was "
                           f"kept in {database})") from None
    except DumpError as exc:
        raise BackupError(f"cannot {verb} {what}: {exc} (nothing was kept in "
                          f"{database})") from None
    except psycopg.Error as exc:
        raise BackupError(f"{verb} stopped at the first error, nothing was kept in {database}: "
                          f"line {line}: {first_line(exc)}{kept_note}") from None
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
        raise BackupError(f"cannot read {what}: {exc}") from None
    return skipped


def import_plain_dump(
    path: Path,
    profile: Profile,
    database: str,
    *,
    progress: ProgressFn = no_progress,
    reapply_erasures: bool = True,
) -> ImportResult:
    """Load a runbook-style plain SQL dump (``pg_dump URL | gzip``) into a new database, then
    counts, ANALYZE and the erasure ledger; the database gets its name only when all of that
    succeeded. The dump runs as the app role, in one transaction that stops at the first
    error, statement by statement: each read by PostgreSQL's own parser, judged
    (``judge``: nothing that leaves that transaction or database) and sent on the
    extended protocol (one statement per message), COPY rows as they are. No psql: a dump's
    meta-commands (``\\!`` runs a shell command) are refused, never run. Refused where the
    profile allows no change; audited as ``backup.import`` (database, file, tables, rows), a
    failure too."""
    profile.require_changes_allowed(f"import {path.name} into a new database {database}")
    with audited("backup.import", profile.name, database=database, file=path.name) as line:
        result = _import(path, profile, database, progress, reapply_erasures)
        line.update(tables=result.tables, rows=result.rows)
    return result


def _import(path: Path, profile: Profile, database: str, progress: ProgressFn,
            reapply_erasures: bool) -> ImportResult:
    t0 = time.monotonic()
    refuse_pooler(profile)
    if not path.is_file():
        raise BackupError(f"no such file: {path}")
    staging = staging_name(database)
    marker = f"studyhub import of {path.name}"
    with admin_connection(profile) as admin:
        if database_exists(admin, database) and not database_is_empty(profile, database):
            raise RefusedError(f"database {database} exists and is not empty; import into a new name")
        if database_exists(admin, staging):
            comment = database_comment(admin, staging) or ""
            if comment.startswith(("studyhub restore of ", "studyhub import of ")):
                drop_database(admin, staging)
            else:
                raise RefusedError(f"database {staging} exists and is not ours; drop or rename it first")
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
            sql.Identifier(staging), sql.Identifier(profile.users["app"])))
        set_database_comment(admin, staging, f"{marker}: in progress")
    size = path.stat().st_size
    raw, stream = _open_dump(path)
    try:
        skipped = load_dump(
            stream, profile, staging, what=path.name, verb="import", database=database,
            on_read=lambda: progress(ProgressEvent("import", raw.tell(), size, raw.tell())),
            kept_note=f" (the partial import is in {staging})")
    finally:
        raw.close()
    with connect(profile, "app", database=staging, autocommit=True,
                 application_name="studyhub import") as conn:
        conn.execute("ANALYZE")
        space = table_sizes(conn, exact_counts=True)
    table_rows = {f"{t.schema}.{t.table}": int(t.rows or 0) for t in space.tables}
    erasures = None
    if reapply_erasures:
        live = profile.database if profile.database not in (database, staging) else None
        erasures = ledger.reapply_erasure_ledger(profile, staging, default_backup_dir(), live)
    swap_in(profile, staging, database)
    return ImportResult(str(path), profile.name, database, len(table_rows),
                        sum(table_rows.values()), table_rows, size,
                        round(time.monotonic() - t0, 3), skipped, erasures)
