"""The statements each migration runs, and the locks each statement takes.

Every migration is rendered on its own with Alembic's offline mode (the exact SQL, including
the ``SET lock_timeout`` the environment issues and the ``COMMIT``/``BEGIN`` around autocommit
blocks), then split and parsed by PostgreSQL's own parser (pglast). Alembic's bookkeeping
(``alembic_version``) is left out. ``statement_locks`` maps a parsed statement to the table
locks PostgreSQL 15 takes for it (the "Explicit Locking" chapter and each command's page of
the manual); tests check the mapping against ``pg_locks`` on a real server.

One module on purpose (~500 lines): the lock table and the walker that consults it for every
statement kind are one mapping, read side by side; split, neither half stands alone.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import pglast
from alembic import command
from pglast import ast, enums

from studyhub.connect import first_line
from studyhub.db.models import Base
from studyhub.ops.migrate.revisions import (
    DEFAULT_LOCK_TIMEOUT,
    ExtraVersions,
    MigrationError,
    alembic_config,
    display_path,
    script_directory,
)

# Table lock modes, weakest first, and what each one stops the application from doing.
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
BLOCKS = {
    "ACCESS SHARE": "no reads or writes, only ACCESS EXCLUSIVE DDL",
    "ROW SHARE": "no reads or writes, only EXCLUSIVE and ACCESS EXCLUSIVE",
    "ROW EXCLUSIVE": "no reads or writes, only DDL such as CREATE INDEX and ALTER TABLE",
    "SHARE UPDATE EXCLUSIVE": "no reads or writes, only other DDL and VACUUM",
    "SHARE": "writes (INSERT, UPDATE, DELETE)",
    "SHARE ROW EXCLUSIVE": "writes (INSERT, UPDATE, DELETE)",
    "EXCLUSIVE": "writes and SELECT … FOR UPDATE",
    "ACCESS EXCLUSIVE": "reads and writes (every query on the table)",
}
AT = enums.AlterTableType
_SHARE_UPDATE_EXCLUSIVE_CMDS = {
    AT.AT_SetStatistics, AT.AT_ClusterOn, AT.AT_DropCluster, AT.AT_SetRelOptions,
    AT.AT_ResetRelOptions, AT.AT_ReplaceRelOptions, AT.AT_SetOptions, AT.AT_ResetOptions,
    AT.AT_ValidateConstraint, AT.AT_AttachPartition,
}
_SHARE_ROW_EXCLUSIVE_CMDS = {
    AT.AT_EnableTrig, AT.AT_EnableAlwaysTrig, AT.AT_EnableReplicaTrig, AT.AT_DisableTrig,
    AT.AT_EnableTrigAll, AT.AT_DisableTrigAll, AT.AT_EnableTrigUser, AT.AT_DisableTrigUser,
}


def strength(mode: str) -> int:
    return LOCK_MODES.index(mode)


@dataclass
class TableLock:
    table: str
    mode: str

    @property
    def blocks(self) -> str:
        return BLOCKS[self.mode]


@dataclass
class Statement:
    revision: str
    number: int  # 1-based position in the migration
    sql: str
    line: int  # 1-based line of the statement in the migration's lint SQL
    kind: str  # the parse node, e.g. AlterTableStmt
    in_transaction: bool
    transaction: int | None  # ordinal of the enclosing transaction in the migration
    node: Any = field(repr=False, compare=False, default=None)
    start: int = field(repr=False, compare=False, default=0)  # char offsets in lint_sql
    end: int = field(repr=False, compare=False, default=0)
    # the line of the migration file whose call emitted it (None: Alembic's own statements)
    source_line: int | None = None


@dataclass
class RenderedMigration:
    revision: str
    down_revision: str | None
    message: str
    path: str
    sql: str  # Alembic's offline SQL for this migration alone
    lint_sql: str  # the statements we analyse, one after another (no alembic_version)
    statements: list[Statement]
    module: Any = field(repr=False, compare=False, default=None)
    parse_error: str | None = None
    direction: str = "upgrade"  # upgrade | downgrade (the migration's downgrade())


class RenderError(MigrationError):
    pass


def name_of(rv: ast.RangeVar | None) -> str | None:
    if rv is None:
        return None
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname and rv.schemaname != "public" \
        else rv.relname


def _revisions_in(rev_range: str | None, extra_versions: ExtraVersions):
    """Revision scripts of ``rev_range`` ("base:head", "0002:head", "m01", None = all), oldest
    first."""
    script = script_directory(extra_versions)
    spec = rev_range or "base:heads"
    lower, sep, upper = spec.partition(":")
    if not sep:
        revs = [script.get_revision(spec)]
        if revs[0] is None:
            raise RenderError(f"no migration {spec!r}")
        return script, revs
    lower = lower or "base"
    upper = upper or "heads"
    try:
        revs = list(script.iterate_revisions(upper, lower))
    except Exception as exc:
        raise RenderError(f"invalid revision range {spec!r}: {first_line(exc)}") from None
    revs.reverse()
    return script, revs


def render_migrations(rev_range: str | None = None, *,
                      extra_versions: ExtraVersions = (),
                      lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                      downgrade: bool = False) -> list[RenderedMigration]:
    """Each migration of the range rendered alone and parsed, oldest first; with
    ``downgrade``, each one's downgrade instead, newest first (the order they would run)."""
    script, revs = _revisions_in(rev_range, extra_versions)
    if downgrade:
        revs = list(reversed(revs))
    out = []
    for rev in revs:
        down = rev.down_revision
        if isinstance(down, (tuple, list)):
            down = down[0] if down else None
        text, source_lines = _render_one(rev.revision, down,
                                         tuple(str(p) for p in extra_versions), lock_timeout,
                                         rev.path, Path(rev.path).stat().st_mtime_ns,
                                         downgrade)
        rendered = parse_migration(rev.revision, text, source_lines)
        rendered.direction = "downgrade" if downgrade else "upgrade"
        rendered.down_revision = down
        rendered.message = (rev.doc or "").strip().splitlines()[0] if rev.doc else ""
        rendered.path = display_path(rev.path)
        rendered.module = rev.module
        out.append(rendered)
    return out


class _SourceTracingBuffer(io.StringIO):
    """Alembic's offline output that remembers, for each write (one statement each: Alembic's
    ``static_output``), the line of the migration file whose call emitted it."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = os.path.realpath(source)
        self.lines: list[tuple[int, int | None]] = []  # (byte offset of the write, line)
        self._bytes = 0

    def write(self, text: str) -> int:
        line = None
        frame = sys._getframe(1)
        while frame is not None:
            if os.path.realpath(frame.f_code.co_filename) == self.source:
                line = frame.f_lineno
                break
            frame = frame.f_back
        self.lines.append((self._bytes, line))
        self._bytes += len(text.encode())
        return super().write(text)


@lru_cache(maxsize=256)
def _render_one(revision: str, down: str | None, extra: tuple[str, ...], lock_timeout: str,
                source: str, _mtime: int, downgrade: bool = False
                ) -> tuple[str, tuple[tuple[int, int | None], ...]]:
    """The migration's offline SQL, and (byte offset, line of ``source``) of each write."""
    cfg = alembic_config(extra, lock_timeout=lock_timeout)
    buf = _SourceTracingBuffer(source)
    cfg.output_buffer = buf
    try:
        if downgrade:
            command.downgrade(cfg, f"{revision}:{down or 'base'}", sql=True)
        else:
            command.upgrade(cfg, f"{down}:{revision}" if down else revision, sql=True)
    except Exception as exc:
        raise RenderError(
            f"cannot render the {'downgrade' if downgrade else 'upgrade'} of migration "
            f"{revision} offline: {first_line(exc)} "
            "(a migration that reads the database must skip that in offline mode: "
            "op.get_context().as_sql)"
        ) from None
    return buf.getvalue(), tuple(buf.lines)


def _touches_alembic_version(node) -> bool:
    rel = getattr(node, "relation", None)
    return isinstance(rel, ast.RangeVar) and rel.relname == "alembic_version"


def _source_line(source_lines, byte_offset: int) -> int | None:
    """The migration file's line that wrote the byte at ``byte_offset`` of the output."""
    found = None
    for start, line in source_lines:
        if start > byte_offset:
            break
        found = line
    return found


def parse_migration(revision: str, sql_text: str,
                    source_lines: Sequence[tuple[int, int | None]] = ()) -> RenderedMigration:
    """Split and parse one migration's offline SQL; track transactions. ``source_lines``
    (from the render) map the output back to the migration file's lines."""
    data = sql_text.encode()
    try:
        raw = pglast.parse_sql(sql_text)
    except pglast.parser.ParseError as exc:
        return RenderedMigration(revision, None, "", "", sql_text, "", [], parse_error=str(exc))
    pieces: list[tuple[str, Any, int | None]] = []
    for r in raw:
        end = r.stmt_location + r.stmt_len if r.stmt_len else len(data)
        text = data[r.stmt_location:end].decode().strip().rstrip(";").strip()
        if _touches_alembic_version(r.stmt):
            continue
        # the statement's last byte is surely in the write that emitted it
        pieces.append((text, r.stmt, _source_line(source_lines, max(end - 1, 0))))
    statements: list[Statement] = []
    lint_parts: list[str] = []
    offset = 0
    in_tx = False
    tx_no = 0
    for text, node, source_line in pieces:
        if isinstance(node, ast.TransactionStmt):
            kind = node.kind
            if kind in (enums.TransactionStmtKind.TRANS_STMT_BEGIN,
                        enums.TransactionStmtKind.TRANS_STMT_START):
                in_tx = True
                tx_no += 1
            elif kind in (enums.TransactionStmtKind.TRANS_STMT_COMMIT,
                          enums.TransactionStmtKind.TRANS_STMT_ROLLBACK):
                in_tx = False
        piece = text + ";\n\n"
        line = "".join(lint_parts).count("\n") + 1
        statements.append(Statement(revision, len(statements) + 1, text, line,
                                    type(node).__name__, in_tx, tx_no if in_tx else None, node,
                                    offset, offset + len(text), source_line))
        lint_parts.append(piece)
        offset += len(piece)
    return RenderedMigration(revision, None, "", "", sql_text, "".join(lint_parts), statements)


# --------------------------------------------------------------------------- locks
def stronger(mode_a: str | None, mode_b: str) -> str:
    """The stronger of two table lock modes (``mode_a`` may be None: none yet)."""
    if mode_a is None or strength(mode_b) > strength(mode_a):
        return mode_b
    return mode_a


def alter_table_lock(cmds) -> str:
    """The mode ALTER TABLE takes: the strongest its subcommands need."""
    mode: str | None = None
    for cmd in cmds or ():
        st = cmd.subtype
        if st in _SHARE_UPDATE_EXCLUSIVE_CMDS:
            mode = stronger(mode, "SHARE UPDATE EXCLUSIVE")
        elif st in _SHARE_ROW_EXCLUSIVE_CMDS:
            mode = stronger(mode, "SHARE ROW EXCLUSIVE")
        elif st == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
                and cmd.def_.contype == enums.ConstrType.CONSTR_FOREIGN:
            mode = stronger(mode, "SHARE ROW EXCLUSIVE")
        elif st == AT.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
            mode = stronger(mode, "SHARE UPDATE EXCLUSIVE")
        else:
            mode = stronger(mode, "ACCESS EXCLUSIVE")
    return mode or "ACCESS EXCLUSIVE"


def statement_locks(node, index_tables: dict[str, str] | None = None) -> list[TableLock] | None:
    """Table locks a statement takes (strongest per table). ``None`` when it cannot be told
    from the statement (procedural code: DO blocks, function calls)."""
    index_tables = index_tables or {}
    locks: dict[str, str] = {}

    def add(table: str | None, mode: str) -> None:
        if table:
            locks[table] = stronger(locks.get(table), mode)

    if isinstance(node, ast.AlterTableStmt):
        if node.objtype == enums.ObjectType.OBJECT_INDEX:
            add(index_tables.get(name_of(node.relation) or ""), "SHARE UPDATE EXCLUSIVE")
        else:
            table = name_of(node.relation)
            add(table, alter_table_lock(node.cmds))
            for cmd in node.cmds or ():
                con = cmd.def_ if isinstance(cmd.def_, ast.Constraint) else None
                if cmd.subtype == AT.AT_AddConstraint and con is not None \
                        and con.contype == enums.ConstrType.CONSTR_FOREIGN:
                    add(name_of(con.pktable), "SHARE ROW EXCLUSIVE")
                if cmd.subtype == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                    for c in cmd.def_.constraints or ():
                        if c.contype == enums.ConstrType.CONSTR_FOREIGN:
                            add(name_of(c.pktable), "SHARE ROW EXCLUSIVE")
    elif isinstance(node, ast.IndexStmt):
        add(name_of(node.relation), "SHARE UPDATE EXCLUSIVE" if node.concurrent else "SHARE")
    elif isinstance(node, ast.DropStmt):
        rt = node.removeType
        for obj in node.objects or ():
            parts = [p.sval for p in obj] if isinstance(obj, (tuple, list)) else []
            name = ".".join(p for p in parts if p != "public") if parts else None
            if rt == enums.ObjectType.OBJECT_INDEX:
                add(index_tables.get(name or ""),
                    "SHARE UPDATE EXCLUSIVE" if node.concurrent else "ACCESS EXCLUSIVE")
            elif rt in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_MATVIEW):
                add(name, "ACCESS EXCLUSIVE")
    elif isinstance(node, ast.CreateStmt):
        add(name_of(node.relation), "ACCESS EXCLUSIVE")
        for elt in node.tableElts or ():
            cons = [elt] if isinstance(elt, ast.Constraint) else list(
                getattr(elt, "constraints", None) or ())
            for c in cons:
                if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN:
                    add(name_of(c.pktable), "SHARE ROW EXCLUSIVE")
    elif isinstance(node, ast.RenameStmt):
        if node.renameType == enums.ObjectType.OBJECT_INDEX:
            add(index_tables.get(name_of(node.relation) or ""), "SHARE UPDATE EXCLUSIVE")
        elif node.relation is not None:
            add(name_of(node.relation), "ACCESS EXCLUSIVE")
    elif isinstance(node, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
        add(name_of(node.relation), "ROW EXCLUSIVE")
    elif isinstance(node, ast.TruncateStmt):
        for rv in node.relations or ():
            add(name_of(rv), "ACCESS EXCLUSIVE")
    elif isinstance(node, ast.ReindexStmt):
        if node.kind == enums.ReindexObjectType.REINDEX_OBJECT_TABLE:
            table = name_of(node.relation)
        elif node.kind == enums.ReindexObjectType.REINDEX_OBJECT_INDEX:
            table = index_tables.get(name_of(node.relation) or "")
        else:
            return None
        concurrent = any(getattr(p, "defname", "") == "concurrently" for p in node.params or ())
        add(table, "SHARE UPDATE EXCLUSIVE" if concurrent else "SHARE")
    elif isinstance(node, ast.CreateTrigStmt):
        add(name_of(node.relation), "SHARE ROW EXCLUSIVE")
    elif isinstance(node, ast.CommentStmt):
        if node.objtype in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_COLUMN):
            parts = [p.sval for p in node.object] if isinstance(node.object, tuple) else []
            if node.objtype == enums.ObjectType.OBJECT_COLUMN:
                parts = parts[:-1]
            add(".".join(p for p in parts if p != "public") or None, "SHARE UPDATE EXCLUSIVE")
    elif isinstance(node, ast.VacuumStmt):
        full = any(getattr(o, "defname", "") == "full" for o in node.options or ())
        for rel in node.rels or ():
            add(name_of(rel.relation), "ACCESS EXCLUSIVE" if full else "SHARE UPDATE EXCLUSIVE")
    elif isinstance(node, ast.ClusterStmt):
        add(name_of(node.relation), "ACCESS EXCLUSIVE")
    elif isinstance(node, ast.LockStmt):
        mode = LOCK_MODES[node.mode - 1] if 1 <= node.mode <= 8 else "ACCESS EXCLUSIVE"
        for rv in node.relations or ():
            add(name_of(rv), mode)
    elif isinstance(node, ast.CallStmt):
        return None
    elif isinstance(node, ast.DoStmt):
        body = procedural_statements(node)
        if body.dynamic:
            return None
        for inner in body.statements:
            inner_locks = statement_locks(inner, index_tables)
            if inner_locks is None:
                return None
            for lk in inner_locks:
                add(lk.table, lk.mode)
    elif isinstance(node, ast.SelectStmt) and _calls_unknown_function(node):
        return None
    # Data-modifying CTEs (WITH … UPDATE …) inside any statement
    for cte_target in _modifying_ctes(node):
        add(cte_target, "ROW EXCLUSIVE")
    return [TableLock(t, m) for t, m in locks.items()]


@dataclass
class ProceduralBody:
    """What a DO block runs: its static SQL statements (parsed; an IF branch counts as run)
    and the parts whose SQL is only known at run time (EXECUTE of a string, CALL, another
    language)."""

    statements: list[Any]
    dynamic: list[str]


def procedural_statements(node: ast.DoStmt) -> ProceduralBody:
    language, body = "plpgsql", None
    for arg in node.args or ():
        if arg.defname == "language":
            language = arg.arg.sval.lower()
        elif arg.defname == "as":
            body = arg.arg.sval
    if language != "plpgsql" or body is None:
        return ProceduralBody([], [f"a DO block in {language}"])
    tag = "$studyhub$"
    while tag in body:
        tag = tag[:-1] + "x$"
    try:
        tree = pglast.parse_plpgsql(f"DO {tag}{body}{tag}")
    except Exception:
        return ProceduralBody([], ["PL/pgSQL that does not parse"])
    out = ProceduralBody([], [])

    def walk(item) -> None:
        if isinstance(item, list):
            for x in item:
                walk(x)
            return
        if not isinstance(item, dict):
            return
        for key, value in item.items():
            if key == "PLpgSQL_stmt_dynexecute":
                out.dynamic.append("EXECUTE of a string built at run time")
                continue
            if key == "PLpgSQL_stmt_call":
                out.dynamic.append(value.get("expr", {}).get("PLpgSQL_expr", {}).get(
                    "query", "CALL"))
                continue
            if key in ("PLpgSQL_stmt_execsql", "PLpgSQL_stmt_perform"):
                expr = value.get("sqlstmt") or value.get("expr") or {}
                query = expr.get("PLpgSQL_expr", {}).get("query", "")
                try:
                    out.statements.extend(r.stmt for r in pglast.parse_sql(query))
                except pglast.parser.ParseError:
                    out.dynamic.append(query)
            walk(value)

    walk(tree)
    return out


# Functions a ``SELECT f(…)`` statement may call without making its locks unknown: settings,
# advisory locks, sequences, clocks. Any other function may run DDL.
KNOWN_CALLS = {
    "set_config", "current_setting", "pg_advisory_lock", "pg_advisory_xact_lock",
    "pg_advisory_unlock", "pg_advisory_unlock_all", "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock_shared",
    "pg_sleep", "pg_notify", "nextval", "setval", "currval", "now", "clock_timestamp",
    "version", "count",
}


def _calls_unknown_function(node: ast.SelectStmt) -> bool:
    """``SELECT f(…)`` with no FROM, calling a function that may run DDL (a function call
    as a statement is how a migration runs a stored procedure's DDL)."""
    if node.fromClause or node.targetList is None:
        return False
    for target in node.targetList:
        val = getattr(target, "val", None)
        if isinstance(val, ast.FuncCall):
            names = [n.sval.lower() for n in val.funcname]
            if names[-1] not in KNOWN_CALLS and names[:-1] != ["pg_catalog"]:
                return True
    return False


def timeout_settings(node) -> list[tuple[str, object, bool]]:
    """(setting, value, is_local) for each lock_timeout/statement_timeout a statement sets:
    ``SET [LOCAL]``, ``RESET`` (value None) and ``SELECT set_config(name, value, is_local)``
    (value None when it is not a constant)."""
    wanted = ("lock_timeout", "statement_timeout")
    if isinstance(node, ast.VariableSetStmt):
        if node.name not in wanted:
            return []
        value = None
        if node.kind == enums.VariableSetKind.VAR_SET_VALUE and node.args:
            const = node.args[0].val
            value = const.ival if isinstance(const, ast.Integer) else getattr(const, "sval", None)
        return [(node.name, value, bool(node.is_local))]
    out = []
    if isinstance(node, ast.SelectStmt) and not node.fromClause:
        for target in node.targetList or ():
            call = getattr(target, "val", None)
            if not isinstance(call, ast.FuncCall) or call.funcname[-1].sval.lower() != "set_config":
                continue
            args = [getattr(a, "val", None) if isinstance(a, ast.A_Const) else None
                    for a in call.args or ()]
            name = getattr(args[0], "sval", None) if args else None
            if name not in wanted:
                continue
            value = args[1] if len(args) > 1 else None
            value = value.ival if isinstance(value, ast.Integer) else getattr(value, "sval", None)
            local = args[2] if len(args) > 2 else None
            is_local = bool(getattr(local, "boolval", False)) if local is not None else False
            out.append((name, value, is_local))
    return out


def _modifying_ctes(node) -> list[str]:
    found = []
    with_clause = getattr(node, "withClause", None)
    for cte in (getattr(with_clause, "ctes", None) or ()):
        q = cte.ctequery
        if isinstance(q, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
            found.append(name_of(q.relation))
    return [f for f in found if f]


def modified_tables(node) -> list[str]:
    """Tables whose rows a statement writes (UPDATE/DELETE/INSERT, also inside CTEs)."""
    out = []
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
        out.append(name_of(node.relation))
    out.extend(_modifying_ctes(node))
    return [t for t in out if t]


def index_tables_from_models() -> dict[str, str]:
    """Index name → table, for every index the models define (DROP INDEX names no table)."""
    out = {}
    for table in Base.metadata.tables.values():
        tname = f"{table.schema}.{table.name}" if table.schema else table.name
        for ix in table.indexes:
            if ix.name:
                out[ix.name] = tname
        for con in table.constraints:
            if con.name and con.__class__.__name__ in ("PrimaryKeyConstraint",
                                                       "UniqueConstraint"):
                out[str(con.name)] = tname
    return out
