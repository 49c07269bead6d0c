"""What the linter knows besides the SQL: the columns the models map, which functions are
volatile without a database to ask, and facts about parsed statements (the functions they
call, whether they are batched, which statements a specific rule judges)."""

from __future__ import annotations

import re

from pglast import ast, enums
from pglast.visitors import Visitor

from studyhub.db.models import Base
from studyhub.ops.migrate import statements as ms

# Functions that make ADD COLUMN … DEFAULT rewrite the table when no database is at hand to
# ask pg_proc (with --profile, pg_proc's provolatile decides).
KNOWN_VOLATILE = {
    "random", "random_normal", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc",
    "uuid_generate_v4", "clock_timestamp", "timeofday", "nextval", "txid_current",
    "pg_current_xact_id", "setseed",
}
SERIAL_TYPES = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}
MAX_LOCK_TIMEOUT_MS = 30_000


def mapped_columns() -> dict[str, set[str]]:
    """Table → the columns the models map (the release being shipped uses them)."""
    out: dict[str, set[str]] = {}
    for table in Base.metadata.tables.values():
        name = f"{table.schema}.{table.name}" if table.schema else table.name
        out[name] = {c.name for c in table.columns}
    return out


def parse_duration_ms(value) -> int | None:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*", str(value))
    if not m:
        return None
    num = float(m.group(1))
    factor = {None: 1, "us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000,
              "d": 86_400_000}[m.group(2)]
    return int(num * factor)


class _FuncNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_FuncCall(self, ancestors, node) -> None:
        self.names.add(node.funcname[-1].sval.lower())


class _HasLimit(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def visit_SelectStmt(self, ancestors, node) -> None:
        if node.limitCount is not None:
            self.found = True


def func_names(node) -> set[str]:
    v = _FuncNames()
    v(node)
    return v.names


def has_limit(node) -> bool:
    v = _HasLimit()
    v(node)
    return v.found


def not_null_check_column(con: ast.Constraint) -> str | None:
    """The column of a ``CHECK (col IS NOT NULL)``, else None."""
    expr = con.raw_expr
    if isinstance(expr, ast.NullTest) and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL \
            and isinstance(expr.arg, ast.ColumnRef):
        fields = expr.arg.fields
        if fields and isinstance(fields[-1], ast.String):
            return fields[-1].sval
    return None


# ALTER TABLE subcommands a specific rule judges, or brief catalog changes (no scan, no
# rewrite; lock_timeout covers their wait). Any other subcommand that takes a strong lock on
# an existing table falls to blocking-table-lock; the rewriting ones to table-rewrite.
_AT = ms.AT
_JUDGED_ALTER_CMDS = {
    _AT.AT_AddColumn, _AT.AT_AddColumnToView, _AT.AT_ColumnDefault, _AT.AT_CookedColumnDefault,
    _AT.AT_DropNotNull, _AT.AT_SetNotNull, _AT.AT_DropExpression, _AT.AT_SetStatistics,
    _AT.AT_SetOptions, _AT.AT_ResetOptions, _AT.AT_SetStorage, _AT.AT_SetCompression,
    _AT.AT_DropColumn, _AT.AT_AddConstraint, _AT.AT_AlterConstraint, _AT.AT_ValidateConstraint,
    _AT.AT_AddIndexConstraint, _AT.AT_DropConstraint, _AT.AT_AlterColumnType, _AT.AT_ChangeOwner,
    _AT.AT_ClusterOn, _AT.AT_DropCluster, _AT.AT_SetRelOptions, _AT.AT_ResetRelOptions,
    _AT.AT_ReplaceRelOptions, _AT.AT_EnableTrig, _AT.AT_EnableAlwaysTrig,
    _AT.AT_EnableReplicaTrig, _AT.AT_DisableTrig, _AT.AT_EnableTrigAll, _AT.AT_DisableTrigAll,
    _AT.AT_EnableTrigUser, _AT.AT_DisableTrigUser, _AT.AT_ReplicaIdentity,
    _AT.AT_EnableRowSecurity, _AT.AT_DisableRowSecurity, _AT.AT_ForceRowSecurity,
    _AT.AT_NoForceRowSecurity, _AT.AT_AddIdentity, _AT.AT_SetIdentity, _AT.AT_DropIdentity,
}
REWRITE_ALTER_CMDS = {
    _AT.AT_SetLogged: "SET LOGGED", _AT.AT_SetUnLogged: "SET UNLOGGED",
    _AT.AT_SetTableSpace: "SET TABLESPACE", _AT.AT_SetAccessMethod: "SET ACCESS METHOD",
    _AT.AT_SetExpression: "SET EXPRESSION",
}
_JUDGED_NODES = (ast.CreateStmt, ast.IndexStmt, ast.ReindexStmt, ast.RenameStmt,
                 ast.CreateTrigStmt, ast.TruncateStmt, ast.VacuumStmt, ast.ClusterStmt,
                 ast.CommentStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)


def judged_by_a_specific_rule(node) -> bool:
    if isinstance(node, _JUDGED_NODES):
        return True
    if isinstance(node, ast.DropStmt):
        return node.removeType in (enums.ObjectType.OBJECT_INDEX, enums.ObjectType.OBJECT_TABLE)
    if isinstance(node, ast.AlterTableStmt):
        return all(cmd.subtype in _JUDGED_ALTER_CMDS or cmd.subtype in REWRITE_ALTER_CMDS
                   for cmd in node.cmds or ())
    return False


def describe(node) -> str:
    """A statement's verb, for messages: LOCK TABLE, ALTER TABLE … AddInherit, CALL f, …"""
    if isinstance(node, ast.LockStmt):
        return "LOCK TABLE"
    if isinstance(node, ast.AlterTableStmt):
        return "ALTER TABLE … " + ", ".join(
            cmd.subtype.name.removeprefix("AT_") for cmd in node.cmds or ())
    if isinstance(node, ast.CallStmt):
        return "CALL " + ".".join(n.sval for n in node.funccall.funcname)
    if isinstance(node, ast.SelectStmt):
        names = sorted(func_names(node))
        return "SELECT " + ", ".join(f"{n}()" for n in names) if names else "SELECT"
    if isinstance(node, ast.DropStmt):
        return "DROP " + node.removeType.name.removeprefix("OBJECT_").replace("_", " ")
    return type(node).__name__.removesuffix("Stmt")


def type_name_of(type_name: ast.TypeName | None) -> str:
    if type_name is None or not type_name.names:
        return ""
    return type_name.names[-1].sval.lower()

