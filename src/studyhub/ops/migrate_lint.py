"""``studyhub migrate lint``: find the migration statements that would lock a busy table.

Each migration is rendered alone (Alembic offline mode, ``ops.migrate_statements``), parsed
with PostgreSQL's own parser (pglast) and checked twice:

- by our rules, which know this schema: which columns the models still map, which tables the
  same migration creates (an index on a brand-new table is harmless), which NOT NULL checks
  were validated earlier in the chain, which transaction each statement runs in, and — with a
  profile — how big each table is;
- by squawk (the ``squawk-cli`` wheel's binary). Where squawk and a rule of ours flag the same
  statement, the finding names both; where our schema knowledge clears a statement squawk
  flags (e.g. SET NOT NULL after a validated CHECK), the squawk warning is dropped and the
  reason kept in ``cleared``; squawk's other findings are warnings.

Acknowledging a finding: the migration module defines ``LINT_ACK``, a dict from a rule id (or
``"rule:table"``) to the reason it is acceptable there::

    LINT_ACK = {
        "create-index-not-concurrently:ops.snapshots": "written hourly by the toolkit only; "
        "the SHARE lock lasts well under a second",
    }

An acknowledged finding is reported but is not an error. An ack without a reason, or naming an
unknown rule, is an error; an ack that matches nothing is a warning (stale acks hide nothing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pglast import ast, enums
from pglast.visitors import Visitor

from studyhub.ops import migrate
from studyhub.ops import migrate_statements as ms

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    title: str
    recipe: str


_RULES = [
    Rule("create-index-not-concurrently", ERROR,
         "CREATE INDEX without CONCURRENTLY on an existing table",
         "Build it with CONCURRENTLY outside the migration's transaction: "
         "migration_helpers.create_index_concurrently(name, table, columns) runs it in "
         "op.get_context().autocommit_block() (SHARE UPDATE EXCLUSIVE: reads and writes go "
         "on), drops an invalid leftover of an earlier failed build first and checks the "
         "new index is valid."),
    Rule("drop-index-not-concurrently", ERROR,
         "DROP INDEX without CONCURRENTLY",
         "migration_helpers.drop_index_concurrently(name, table=...) — DROP INDEX "
         "CONCURRENTLY IF EXISTS in an autocommit block."),
    Rule("reindex-not-concurrently", ERROR,
         "REINDEX without CONCURRENTLY",
         "REINDEX … CONCURRENTLY inside op.get_context().autocommit_block()."),
    Rule("concurrently-in-transaction", ERROR,
         "CONCURRENTLY inside a transaction block",
         "PostgreSQL refuses it ('cannot run inside a transaction block') and the migration "
         "fails. Put the statement in `with op.get_context().autocommit_block():` or use the "
         "migration_helpers functions, which do."),
    Rule("constraint-not-valid-missing", ERROR,
         "CHECK or FOREIGN KEY added to an existing table without NOT VALID",
         "Add it NOT VALID (no scan, brief lock), then VALIDATE CONSTRAINT in a separate "
         "transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on): "
         "migration_helpers.add_check_not_valid / add_foreign_key_not_valid, then "
         "migration_helpers.validate_constraint."),
    Rule("validate-in-same-transaction", ERROR,
         "VALIDATE CONSTRAINT in the transaction that added the constraint",
         "The ACCESS EXCLUSIVE lock taken by ADD CONSTRAINT … NOT VALID is held until commit, "
         "so the validating scan runs under it. Validate in its own transaction: "
         "migration_helpers.validate_constraint (autocommit block) or a later migration."),
    Rule("unique-constraint-builds-index", ERROR,
         "UNIQUE / PRIMARY KEY / EXCLUDE constraint that builds its index under the lock",
         "CREATE UNIQUE INDEX CONCURRENTLY first (migration_helpers.create_index_concurrently"
         "(..., unique=True)), then ALTER TABLE … ADD CONSTRAINT name UNIQUE USING INDEX name "
         "(a catalog change)."),
    Rule("set-not-null-scans-table", ERROR,
         "SET NOT NULL on an existing table without a validated CHECK (col IS NOT NULL)",
         "migration_helpers.add_not_null(table, column): CHECK (col IS NOT NULL) NOT VALID → "
         "VALIDATE (SHARE UPDATE EXCLUSIVE) → SET NOT NULL (no scan: the valid CHECK proves "
         "it) → drop the CHECK."),
    Rule("add-required-column", ERROR,
         "NOT NULL column without a default added to an existing table",
         "It fails on a table with rows, and every INSERT of the running release (which does "
         "not know the column) fails after it. Add it nullable, set a default for new rows "
         "(ALTER COLUMN … SET DEFAULT), backfill in batches "
         "(migration_helpers.backfill_in_batches), then migration_helpers.add_not_null."),
    Rule("column-type-rewrite", ERROR,
         "Column type change on an existing table",
         "Expand/contract: add a new column of the new type, write both (trigger or app), "
         "backfill in batches, switch reads, drop the old column in a later release. "
         "Changes PostgreSQL does without a rewrite (varchar(n) → text or a longer varchar, "
         "numeric precision increase) can be acknowledged with that reason."),
    Rule("volatile-default", ERROR,
         "New column whose default rewrites the table (volatile default, serial, identity, "
         "stored generated column)",
         "Add the column without a default, then ALTER COLUMN … SET DEFAULT (applies to new "
         "rows only, no rewrite), backfill existing rows with "
         "migration_helpers.backfill_in_batches, then add_not_null if needed."),
    Rule("drop-mapped-column", ERROR,
         "Dropping a column the models still map",
         "Contract in two releases: remove the column from the models (and every query) and "
         "ship that; drop the column in a later migration, once no running release uses it."),
    Rule("drop-column", WARNING,
         "Dropping a column (no longer mapped)",
         "Irreversible: the downgrade cannot bring the data back. Make sure no release still "
         "running reads it and that a backup has it if it may be needed."),
    Rule("drop-mapped-table", ERROR,
         "Dropping a table the models still map",
         "Remove the model and its uses in one release; drop the table in a later one."),
    Rule("drop-table", WARNING,
         "Dropping a table (no longer mapped)",
         "Irreversible; ACCESS EXCLUSIVE on the table and on those it references. Make sure "
         "no running release uses it and a backup has its data if needed."),
    Rule("rename-column", ERROR,
         "Renaming a column the application uses",
         "The release running during the deploy uses the old name, the new release the new "
         "one: one of them fails. Add the new column, write both, backfill, switch reads, "
         "drop the old column later."),
    Rule("rename-table", ERROR,
         "Renaming a table the application uses",
         "Rename, then create a view with the old name (simple views are updatable) for the "
         "old release, and drop the view in a later migration."),
    Rule("table-rewrite", ERROR,
         "Statement that rewrites an existing table under ACCESS EXCLUSIVE (CLUSTER, VACUUM "
         "FULL, SET LOGGED/UNLOGGED, SET TABLESPACE, SET ACCESS METHOD)",
         "Do not rewrite a live table in a migration: reads and writes wait for the whole "
         "copy. Rebuild it online with pg_repack (CLUSTER / VACUUM FULL / SET TABLESPACE "
         "equivalents, brief locks only) outside the deploy; for LOGGED/UNLOGGED create a new "
         "table, copy in batches (migration_helpers.backfill_in_batches pattern) and swap "
         "names in a later migration. Plain VACUUM / ANALYZE block nobody."),
    Rule("truncate-table", ERROR,
         "TRUNCATE of an existing table",
         "TRUNCATE takes ACCESS EXCLUSIVE until commit and deletes every row for good (the "
         "downgrade cannot bring them back). Delete the rows that must go in batches outside "
         "the transaction (DELETE … WHERE id IN (SELECT id … LIMIT n), one batch per "
         "transaction), or stop using the table and drop it in a later release. TRUNCATE is "
         "only fine on a table no release uses yet: acknowledge that in LINT_ACK."),
    Rule("blocking-table-lock", ERROR,
         "Statement that holds a lock blocking writes or reads (SHARE, SHARE ROW EXCLUSIVE, "
         "EXCLUSIVE, ACCESS EXCLUSIVE) on an existing table, not judged by a specific rule",
         "Do not take explicit table locks in a migration (LOCK TABLE): each statement takes "
         "the lock it needs, for as short as it needs, and `migrate up` waits at most "
         "lock_timeout for it. If the statement must run, keep it alone in its own short "
         "transaction (no UPDATE or scan after it), check `studyhub migrate plan` for what it "
         "blocks and for how long, and acknowledge it in LINT_ACK with the reason."),
    Rule("procedural-code", WARNING,
         "DO block, CALL or function call whose locks cannot be told from the SQL",
         "Prefer plain statements (or the migration_helpers functions) so lint and `migrate "
         "plan` can see each lock. If the code must stay procedural, read it for DDL and "
         "table locks (or run it once on a copy and watch pg_locks), then acknowledge it in "
         "LINT_ACK with what it does."),
    Rule("lock-timeout-missing", ERROR,
         "A statement that needs a table lock runs without lock_timeout",
         "Do not RESET or zero lock_timeout in a migration: `studyhub migrate up` sets it "
         "(--lock-timeout, default 5s) and retries with backoff, so waiting is never needed. "
         "A statement waiting for a lock queues every later query on that table behind it."),
    Rule("lock-timeout-too-long", WARNING,
         "lock_timeout longer than 30 s",
         "While the migration waits for its lock every query on the table waits behind it; "
         "keep lock_timeout at a few seconds and let `migrate up` retry."),
    Rule("update-in-ddl-transaction", ERROR,
         "Rows updated in the transaction that altered the table",
         "The ALTER's lock is held until commit, so reads and writes wait for the whole "
         "UPDATE. Commit the DDL first and backfill in batches outside the transaction: "
         "migration_helpers.backfill_in_batches."),
    Rule("unbatched-update", WARNING,
         "UPDATE/DELETE of an existing table in one statement",
         "One transaction holds the row locks of every row it touches until it commits "
         "(concurrent writers to those rows wait) and keeps vacuum from cleaning up. "
         "migration_helpers.backfill_in_batches commits every few thousand rows."),
    Rule("unparsable-sql", ERROR,
         "The rendered SQL does not parse",
         "Render it with `studyhub migrate plan` or Alembic --sql and fix the statement."),
    Rule("ack-without-reason", ERROR,
         "LINT_ACK entry without a reason",
         "Give the reason the finding is acceptable here, in a sentence."),
    Rule("ack-unknown-rule", ERROR,
         "LINT_ACK names a rule that does not exist",
         "Use a rule id from `studyhub migrate lint --rules` (squawk's rule names too)."),
    Rule("ack-unused", WARNING,
         "LINT_ACK entry that matches no finding",
         "Remove it, so it cannot hide a later problem."),
]
RULES = {r.id: r for r in _RULES}

# squawk rule → our rules that judge the same danger (with our schema knowledge).
SQUAWK_MAP = {
    "require-concurrent-index-creation": {"create-index-not-concurrently"},
    "require-concurrent-index-deletion": {"drop-index-not-concurrently"},
    "require-concurrent-reindex": {"reindex-not-concurrently"},
    "ban-concurrent-index-creation-in-transaction": {"concurrently-in-transaction"},
    "constraint-missing-not-valid": {"constraint-not-valid-missing",
                                     "validate-in-same-transaction"},
    "adding-foreign-key-constraint": {"constraint-not-valid-missing"},
    "adding-not-nullable-field": {"set-not-null-scans-table"},
    "adding-required-field": {"add-required-column"},
    "changing-column-type": {"column-type-rewrite"},
    "adding-field-with-default": {"volatile-default"},
    "adding-serial-primary-key-field": {"unique-constraint-builds-index", "volatile-default"},
    "disallowed-unique-constraint": {"unique-constraint-builds-index"},
    "renaming-column": {"rename-column"},
    "renaming-table": {"rename-table"},
    "ban-drop-column": {"drop-mapped-column", "drop-column"},
    "ban-drop-table": {"drop-mapped-table", "drop-table"},
    "require-timeout-settings": {"lock-timeout-missing"},
    "require-lock-timeout": {"lock-timeout-missing"},
    "ban-drop-constraint": {"drop-constraint"},
}
# squawk rules we do not run, and why (docs/migrations.md repeats this).
SQUAWK_EXCLUDED = {
    "require-statement-timeout": "a statement_timeout would kill a legitimate long VALIDATE or "
    "concurrent index build; lock_timeout is what protects the app, and long scans run "
    "outside the transaction under locks that block nobody",
    "prefer-robust-stmts": "each migration is one transaction (transaction_per_migration); "
    "the steps that commit part-way are our helpers, which check the catalog and skip what is "
    "done, so a rerun after a failure resumes",
    "transaction-nesting": "the rendered SQL spells out Alembic's own BEGIN/COMMIT",
}
SQUAWK_ERRORS = {"ban-drop-database", "ban-truncate-cascade"}
# The rules of squawk 2.70 (for LINT_ACK validation).
SQUAWK_RULES = set("""
adding-field-with-default adding-foreign-key-constraint adding-not-nullable-field
adding-required-field adding-serial-primary-key-field ban-add-column
ban-add-composite-attribute ban-add-enum-value ban-alter-database-options
ban-alter-domain-with-add-constraint ban-alter-extension ban-alter-function-options
ban-alter-generated-expression ban-alter-identity ban-alter-policy-condition
ban-alter-policy-roles ban-alter-role-options ban-alter-row-level-security
ban-alter-sequence-values ban-alter-system-options ban-alter-view-options ban-char-field
ban-concurrent-index-creation-in-transaction ban-create-domain-with-constraint
ban-create-policy ban-detach-inheritance ban-disable-trigger ban-drop-column
ban-drop-constraint ban-drop-database ban-drop-domain ban-drop-extension ban-drop-function
ban-drop-generated-expression ban-drop-index ban-drop-not-null ban-drop-policy
ban-drop-schema ban-drop-sequence ban-drop-table ban-drop-type ban-drop-view
ban-duplicate-column-assignments ban-new-write-restriction ban-replace-view-function
ban-replica-identity ban-revoke ban-set-default ban-set-schema ban-truncate-cascade
ban-uncommitted-transaction changing-column-type constraint-missing-not-valid
disallowed-unique-constraint identifier-too-long prefer-bigint-over-int
prefer-bigint-over-smallint prefer-identity prefer-repack prefer-robust-stmts
prefer-text-field prefer-timestamp-tz renaming-column renaming-object renaming-table
require-concurrent-index-creation require-concurrent-index-deletion
require-concurrent-partition-detach require-concurrent-reindex require-enum-value-ordering
require-lock-timeout require-statement-timeout require-table-schema require-timeout-settings
transaction-nesting unused-ignore
""".split())

# Functions that make ADD COLUMN … DEFAULT rewrite the table when no database is at hand to
# ask pg_proc (with --profile, pg_proc's provolatile decides).
KNOWN_VOLATILE = {
    "random", "random_normal", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc",
    "uuid_generate_v4", "clock_timestamp", "timeofday", "nextval", "txid_current",
    "pg_current_xact_id", "setseed",
}
SERIAL_TYPES = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}
MAX_LOCK_TIMEOUT_MS = 30_000


@dataclass
class Finding:
    revision: str
    path: str
    statement_number: int
    line: int
    statement: str
    rule: str
    severity: str  # error | warning
    table: str | None
    why: str
    recipe: str
    source: str = "studyhub"  # studyhub | squawk
    also_flagged_by: list[str] = field(default_factory=list)
    table_rows: int | None = None
    table_bytes: int | None = None
    acknowledged: str | None = None  # the LINT_ACK reason
    places: int = 1  # squawk: how many places in the statement (e.g. columns) it flagged
    direction: str = "upgrade"  # upgrade | downgrade: which function of the migration

    @property
    def blocking(self) -> bool:
        return self.severity == ERROR and self.acknowledged is None


@dataclass
class Cleared:
    revision: str
    statement_number: int
    squawk_rule: str
    reason: str


@dataclass
class LintReport:
    rev_range: str
    migrations: list[str]
    findings: list[Finding]
    cleared: list[Cleared]
    sizes_from: str | None = None
    sizes_error: str | None = None
    squawk: str | None = None  # squawk's version
    direction: str = "upgrade"  # upgrade | downgrade

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.blocking)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING and not f.acknowledged)

    @property
    def acknowledged(self) -> int:
        return sum(1 for f in self.findings if f.acknowledged)

    @property
    def ok(self) -> bool:
        return self.errors == 0


# --------------------------------------------------------------------------- knowledge
def mapped_columns() -> dict[str, set[str]]:
    """Table → the columns the models map (the release being shipped uses them)."""
    from studyhub.db.models import Base

    out: dict[str, set[str]] = {}
    for table in Base.metadata.tables.values():
        name = f"{table.schema}.{table.name}" if table.schema else table.name
        out[name] = {c.name for c in table.columns}
    return out


def _parse_duration_ms(value) -> int | None:
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


def _func_names(node) -> set[str]:
    v = _FuncNames()
    v(node)
    return v.names


def _has_limit(node) -> bool:
    v = _HasLimit()
    v(node)
    return v.found


def _not_null_check_column(con: ast.Constraint) -> str | None:
    """The column of a ``CHECK (col IS NOT NULL)``, else None."""
    expr = con.raw_expr
    if isinstance(expr, ast.NullTest) and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL \
            and isinstance(expr.arg, ast.ColumnRef):
        fields = expr.arg.fields
        if fields and isinstance(fields[-1], ast.String):
            return fields[-1].sval
    return None


@dataclass
class _MigrationState:
    """What the statements of one migration have established so far."""

    created: set[str] = field(default_factory=set)  # tables this migration creates
    lock_timeout_ms: int | None = None  # session setting
    local_timeout_ms: int | None = None  # SET LOCAL, until the transaction ends
    tx_locks: dict[str, str] = field(default_factory=dict)  # held until the next commit
    dropped_in_tx: dict[int, set[str]] = field(default_factory=dict)  # transaction → tables


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
_REWRITE_ALTER_CMDS = {
    _AT.AT_SetLogged: "SET LOGGED", _AT.AT_SetUnLogged: "SET UNLOGGED",
    _AT.AT_SetTableSpace: "SET TABLESPACE", _AT.AT_SetAccessMethod: "SET ACCESS METHOD",
    _AT.AT_SetExpression: "SET EXPRESSION",
}
_JUDGED_NODES = (ast.CreateStmt, ast.IndexStmt, ast.ReindexStmt, ast.RenameStmt,
                 ast.CreateTrigStmt, ast.TruncateStmt, ast.VacuumStmt, ast.ClusterStmt,
                 ast.CommentStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)


def _judged_by_a_specific_rule(node) -> bool:
    if isinstance(node, _JUDGED_NODES):
        return True
    if isinstance(node, ast.DropStmt):
        return node.removeType in (enums.ObjectType.OBJECT_INDEX, enums.ObjectType.OBJECT_TABLE)
    if isinstance(node, ast.AlterTableStmt):
        return all(cmd.subtype in _JUDGED_ALTER_CMDS or cmd.subtype in _REWRITE_ALTER_CMDS
                   for cmd in node.cmds or ())
    return False


def _describe(node) -> str:
    """A statement's verb, for messages: LOCK TABLE, ALTER TABLE … AddInherit, CALL f, …"""
    if isinstance(node, ast.LockStmt):
        return "LOCK TABLE"
    if isinstance(node, ast.AlterTableStmt):
        return "ALTER TABLE … " + ", ".join(
            cmd.subtype.name.removeprefix("AT_") for cmd in node.cmds or ())
    if isinstance(node, ast.CallStmt):
        return "CALL " + ".".join(n.sval for n in node.funccall.funcname)
    if isinstance(node, ast.SelectStmt):
        names = sorted(_func_names(node))
        return "SELECT " + ", ".join(f"{n}()" for n in names) if names else "SELECT"
    if isinstance(node, ast.DropStmt):
        return "DROP " + node.removeType.name.removeprefix("OBJECT_").replace("_", " ")
    return type(node).__name__.removesuffix("Stmt")


def _type_name(type_name: ast.TypeName | None) -> str:
    if type_name is None or not type_name.names:
        return ""
    return type_name.names[-1].sval.lower()


# --------------------------------------------------------------------------- analysis
class _Analyzer:
    """Walks the chain oldest first, keeping what earlier statements established."""

    def __init__(self, volatile: set[str], sizes: dict[str, tuple[int, int]]) -> None:
        self.mapped = mapped_columns()
        self.index_tables = ms.index_tables_from_models()
        self.volatile = volatile
        self.sizes = sizes
        # (table, constraint) → {"column": col or None, "valid": bool, "tx": (rev, n) or None}
        self.constraints: dict[tuple[str, str], dict] = {}
        self.proven_not_null: set[tuple[str, str]] = set()
        self.findings: list[Finding] = []
        self.cleared: dict[tuple[str, int], dict[str, str]] = {}
        # A downgrade undoes a release: the models then map columns it legitimately drops.
        self.downgrade = False
        self._dropping: set[str] = set()  # tables the current transaction drops

    # -- helpers
    def flag(self, m: ms.RenderedMigration, st: ms.Statement, rule: str, table: str | None,
             why: str) -> None:
        r = RULES[rule]
        rows, size = self.sizes.get(table or "", (None, None))
        self.findings.append(Finding(
            m.revision, m.path, st.number, st.line, st.sql, rule, r.severity, table,
            why, r.recipe, table_rows=rows, table_bytes=size, direction=m.direction))

    def clear(self, m: ms.RenderedMigration, st: ms.Statement, rule: str, reason: str) -> None:
        self.cleared.setdefault((m.revision, st.number), {})[rule] = reason

    # -- per migration
    def migration(self, m: ms.RenderedMigration) -> None:
        if m.parse_error:
            self.findings.append(Finding(m.revision, m.path, 0, 0, "", "unparsable-sql", ERROR,
                                         None, m.parse_error, RULES["unparsable-sql"].recipe,
                                         direction=m.direction))
            return
        self.downgrade = m.direction == "downgrade"
        state = _MigrationState()
        for st in m.statements:  # tables each transaction drops (a downgrade's teardown)
            if st.in_transaction and isinstance(st.node, ast.DropStmt) \
                    and st.node.removeType == enums.ObjectType.OBJECT_TABLE:
                for obj in st.node.objects or ():
                    name = ".".join(p.sval for p in obj if p.sval != "public")
                    state.dropped_in_tx.setdefault(st.transaction, set()).add(name)
        for st in m.statements:
            node = st.node
            if isinstance(node, ast.TransactionStmt):
                if node.kind in (enums.TransactionStmtKind.TRANS_STMT_COMMIT,
                                 enums.TransactionStmtKind.TRANS_STMT_ROLLBACK):
                    state.tx_locks = {}
                    state.local_timeout_ms = None
                continue
            self._one(m, st, node, state)

    def _one(self, m, st, node, state: "_MigrationState", inside: str | None = None) -> None:
        """Judge one statement (``inside``: the DO block it sits in, if any)."""
        settings = ms.timeout_settings(node)
        if settings:
            for name, value, is_local in settings:
                if name != "lock_timeout":
                    continue
                ms_value = _parse_duration_ms(value) if value is not None else None
                if is_local:
                    state.local_timeout_ms = ms_value
                else:
                    state.lock_timeout_ms = ms_value
            return
        created = state.created
        locks = ms.statement_locks(node, self.index_tables)
        if isinstance(node, ast.DoStmt):
            body = ms.procedural_statements(node)
            if locks is None:
                self.flag(m, st, "procedural-code", None,
                          "PostgreSQL only learns what this DO block locks when it runs it: "
                          + "; ".join(body.dynamic or ["a statement whose locks cannot be told"])
                          + (" (its static statements are checked too)" if body.statements
                             else ""))
            for inner in body.statements:
                self._one(m, st, inner, state, inside="DO block")
            return
        if locks is None:
            self.flag(m, st, "procedural-code", None,
                      f"{_describe(node)} runs code whose statements and locks PostgreSQL "
                      "only learns when it runs (a function or procedure can run any DDL)")
            locks = []
        # lock_timeout: every lock on a table that existed before this migration
        existing_locks = [lk for lk in locks if lk.table not in created]
        effective = state.local_timeout_ms if state.local_timeout_ms is not None \
            else state.lock_timeout_ms
        strongest = max(existing_locks, key=lambda lk: ms.strength(lk.mode), default=None)
        if strongest is not None and not isinstance(node, ast.CreateStmt):
            if ms.strength(strongest.mode) >= ms.strength("SHARE UPDATE EXCLUSIVE"):
                if not effective:
                    self.flag(m, st, "lock-timeout-missing", strongest.table,
                              f"needs {strongest.mode} on {strongest.table} with no "
                              "lock_timeout in force: while it waits, every query on the "
                              f"table queues behind it")
                elif effective > MAX_LOCK_TIMEOUT_MS:
                    self.flag(m, st, "lock-timeout-too-long", strongest.table,
                              f"lock_timeout is {effective / 1000:.0f} s: queries on "
                              f"{strongest.table} can queue that long behind this "
                              "statement")
                else:
                    self.clear(m, st, "lock-timeout-missing",
                               f"lock_timeout {effective} ms is in force")
        self._dropping = state.dropped_in_tx.get(st.transaction, set()) \
            if st.in_transaction else set()
        self._statement(m, st, node, created, state.tx_locks)
        if strongest is not None and ms.strength(strongest.mode) >= ms.strength("SHARE") \
                and not _judged_by_a_specific_rule(node):
            held = ("until the migration's transaction commits" if st.in_transaction
                    else "for the whole statement")
            where = f" (inside a {inside})" if inside else ""
            self.flag(m, st, "blocking-table-lock", strongest.table,
                      f"{_describe(node)}{where} takes {strongest.mode} on {strongest.table} "
                      f"and holds it {held}: {ms.BLOCKS[strongest.mode]} wait meanwhile")
        if st.in_transaction:
            for lk in locks:
                state.tx_locks[lk.table] = ms._max(state.tx_locks.get(lk.table), lk.mode)

    def _statement(self, m, st, node, created: set[str], tx_locks: dict[str, str]) -> None:
        if isinstance(node, ast.CreateStmt):
            created.add(ms.name_of(node.relation))
            return
        if isinstance(node, ast.IndexStmt):
            table = ms.name_of(node.relation)
            if node.idxname:
                self.index_tables[node.idxname] = table
            if node.concurrent:
                if st.in_transaction:
                    self.flag(m, st, "concurrently-in-transaction", table,
                              "CREATE INDEX CONCURRENTLY cannot run inside a transaction block: "
                              "the migration fails here")
            elif table in created:
                self.clear(m, st, "create-index-not-concurrently",
                           f"{table} is created in this migration (empty, unused)")
            else:
                self.flag(m, st, "create-index-not-concurrently", table,
                          f"CREATE INDEX takes a SHARE lock on {table}: every INSERT, UPDATE "
                          "and DELETE on it waits for the whole index build")
            return
        if isinstance(node, ast.ReindexStmt):
            concurrent = any(getattr(p, "defname", "") == "concurrently"
                             for p in node.params or ())
            locks = ms.statement_locks(node, self.index_tables) or []
            table = locks[0].table if locks else ms.name_of(node.relation)
            if concurrent and st.in_transaction:
                self.flag(m, st, "concurrently-in-transaction", table,
                          "REINDEX CONCURRENTLY cannot run inside a transaction block")
            elif not concurrent and table not in created:
                self.flag(m, st, "reindex-not-concurrently", table,
                          f"REINDEX blocks writes to {table} (SHARE) and reads that use the "
                          "index (ACCESS EXCLUSIVE on it) for the whole rebuild")
            return
        if isinstance(node, ast.TruncateStmt):
            for rv in node.relations or ():
                table = ms.name_of(rv)
                if table in created:
                    continue
                self.flag(m, st, "truncate-table", table,
                          f"TRUNCATE takes ACCESS EXCLUSIVE on {table}"
                          + (" until the migration's transaction commits" if st.in_transaction
                             else "") + " and deletes all of its rows"
                          + (" (and, CASCADE, those of every table referencing it)"
                             if node.behavior == enums.DropBehavior.DROP_CASCADE else ""))
            return
        if isinstance(node, (ast.VacuumStmt, ast.ClusterStmt)):
            full = isinstance(node, ast.ClusterStmt) or any(
                getattr(o, "defname", "") == "full" for o in node.options or ())
            rels = [node.relation] if isinstance(node, ast.ClusterStmt) else [
                r.relation for r in node.rels or ()]
            rels = [r for r in rels if r is not None]
            verb = "CLUSTER" if isinstance(node, ast.ClusterStmt) else "VACUUM FULL"
            for table in (ms.name_of(r) for r in rels):
                if full and table and table not in created:
                    self.flag(m, st, "table-rewrite", table,
                              f"{verb} rewrites {table} (and rebuilds its indexes) under ACCESS "
                              "EXCLUSIVE: every read and write waits for the whole copy")
            if full and not rels:
                self.flag(m, st, "table-rewrite", None,
                          f"{verb} with no table rewrites every table it may, one after the "
                          "other, each under ACCESS EXCLUSIVE")
            return
        if isinstance(node, ast.DropStmt):
            self._drop(m, st, node, created)
            return
        if isinstance(node, ast.RenameStmt):
            self._rename(m, st, node, created)
            return
        if isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
            self._alter_table(m, st, node, created)
            return
        if isinstance(node, ast.InsertStmt):
            return  # inserting reference rows is not a backfill
        targets = ms.modified_tables(node)
        for table in targets:
            if table in created:
                continue
            held = tx_locks.get(table)
            if st.in_transaction and held and ms.strength(held) >= ms.strength("SHARE"):
                self.flag(m, st, "update-in-ddl-transaction", table,
                          f"this transaction already holds {held} on {table} (from an earlier "
                          "statement); it keeps it while this statement writes every row, "
                          f"blocking {ms.BLOCKS[held]} until commit")
            elif isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)) or (
                    isinstance(node, ast.SelectStmt)):
                if _has_limit(node) and not st.in_transaction:
                    self.clear(m, st, "unbatched-update",
                               "batched (LIMIT), each batch its own transaction")
                else:
                    self.flag(m, st, "unbatched-update", table,
                              f"one statement{' inside the migration transaction' if st.in_transaction else ''}"
                              f" writes every matching row of {table}; each row stays locked "
                              "until it commits")

    def _drop(self, m, st, node: ast.DropStmt, created: set[str]) -> None:
        rt = node.removeType
        for obj in node.objects or ():
            parts = [p.sval for p in obj] if isinstance(obj, (tuple, list)) else []
            name = ".".join(p for p in parts if p != "public")
            if rt == enums.ObjectType.OBJECT_INDEX:
                table = self.index_tables.get(name)
                if node.concurrent:
                    if st.in_transaction:
                        self.flag(m, st, "concurrently-in-transaction", table,
                                  "DROP INDEX CONCURRENTLY cannot run inside a transaction block")
                elif table in created:
                    self.clear(m, st, "drop-index-not-concurrently",
                               f"{table} is created in this migration")
                elif table in self._dropping:
                    self.clear(m, st, "drop-index-not-concurrently",
                               f"{table} itself is dropped in this transaction (the same "
                               "ACCESS EXCLUSIVE lock, released at the same commit)")
                else:
                    self.flag(m, st, "drop-index-not-concurrently", table,
                              f"DROP INDEX takes ACCESS EXCLUSIVE on {table or 'its table'}: "
                              "reads and writes wait, and it waits behind every running "
                              "query on the table")
            elif rt == enums.ObjectType.OBJECT_TABLE:
                if name in created:
                    continue
                if self.downgrade:
                    self.flag(m, st, "drop-table", name,
                              f"the downgrade drops {name} and its data for good (upgrading "
                              "again brings the table back empty)")
                elif name in self.mapped:
                    self.flag(m, st, "drop-mapped-table", name,
                              f"the models still map {name}: the release being shipped reads "
                              "and writes it")
                else:
                    self.flag(m, st, "drop-table", name,
                              f"drops {name} and its data for good")

    def _rename(self, m, st, node: ast.RenameStmt, created: set[str]) -> None:
        table = ms.name_of(node.relation)
        if table in created:
            return
        if node.renameType == enums.ObjectType.OBJECT_COLUMN:
            cols = self.mapped.get(table or "", set())
            if node.subname in cols or node.newname in cols:
                self.flag(m, st, "rename-column", table,
                          f"{table}.{node.subname} → {node.newname}: the models map "
                          f"{node.newname if node.newname in cols else node.subname}; the "
                          "release running during the deploy and the new one disagree on "
                          "the name, so one of them fails")
        elif node.renameType == enums.ObjectType.OBJECT_TABLE:
            new = node.newname if not node.relation.schemaname or \
                node.relation.schemaname == "public" else f"{node.relation.schemaname}.{node.newname}"
            if table in self.mapped or new in self.mapped:
                self.flag(m, st, "rename-table", table,
                          f"{table} → {node.newname}: one of the two releases running during "
                          "the deploy uses a name that no longer exists")

    def _alter_table(self, m, st, node: ast.AlterTableStmt, created: set[str]) -> None:
        table = ms.name_of(node.relation)
        new = table in created
        for cmd in node.cmds or ():
            sub = cmd.subtype
            if sub == ms.AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                self._add_column(m, st, table, cmd.def_, new)
            elif sub == ms.AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                self._add_constraint(m, st, table, cmd.def_, new)
            elif sub == ms.AT.AT_ValidateConstraint:
                info = self.constraints.get((table, cmd.name))
                if info is not None:
                    if st.in_transaction and info.get("tx") == (m.revision, st.transaction):
                        self.flag(m, st, "validate-in-same-transaction", table,
                                  f"{cmd.name} was added NOT VALID earlier in this transaction; "
                                  "its ACCESS EXCLUSIVE lock is still held while VALIDATE "
                                  f"scans {table}")
                    else:
                        self.clear(m, st, "constraint-not-valid-missing",
                                   "VALIDATE in its own transaction (SHARE UPDATE EXCLUSIVE)")
                    info["valid"] = True
                    if info.get("column"):
                        self.proven_not_null.add((table, info["column"]))
            elif sub == ms.AT.AT_SetNotNull:
                if new:
                    continue
                if (table, cmd.name) in self.proven_not_null:
                    self.clear(m, st, "set-not-null-scans-table",
                               f"a validated CHECK ({cmd.name} IS NOT NULL) proves the column, "
                               "so SET NOT NULL does not scan")
                else:
                    self.flag(m, st, "set-not-null-scans-table", table,
                              f"SET NOT NULL on {table}.{cmd.name} scans the whole table under "
                              "ACCESS EXCLUSIVE: reads and writes wait for the scan")
            elif sub in _REWRITE_ALTER_CMDS:
                if not new:
                    self.flag(m, st, "table-rewrite", table,
                              f"ALTER TABLE {table} {_REWRITE_ALTER_CMDS[sub]} copies the whole "
                              "table (and rebuilds its indexes) under ACCESS EXCLUSIVE: every "
                              "read and write waits for the copy")
            elif sub == ms.AT.AT_AlterColumnType:
                if not new:
                    self.flag(m, st, "column-type-rewrite", table,
                              f"changing the type of {table}.{cmd.name} rewrites the table and "
                              "rebuilds its indexes under ACCESS EXCLUSIVE (unless the change "
                              "is binary-coercible)")
            elif sub == ms.AT.AT_DropColumn:
                if new:
                    continue
                if self.downgrade:
                    self.flag(m, st, "drop-column", table,
                              f"the downgrade drops {table}.{cmd.name} and its data for good "
                              "(upgrading again brings the column back empty)")
                elif cmd.name in self.mapped.get(table or "", set()):
                    self.flag(m, st, "drop-mapped-column", table,
                              f"the models still map {table}.{cmd.name}: the release being "
                              "shipped selects and inserts it and fails once it is gone")
                else:
                    self.flag(m, st, "drop-column", table,
                              f"drops {table}.{cmd.name} and its data for good")
            elif sub == ms.AT.AT_DropConstraint:
                info = self.constraints.pop((table, cmd.name), None)
                if info and info.get("column") and (table, info["column"]) in self.proven_not_null:
                    self.clear(m, st, "drop-constraint",
                               f"the CHECK ({info['column']} IS NOT NULL) is redundant once the "
                               "column is NOT NULL")

    def _add_column(self, m, st, table: str, col: ast.ColumnDef, new: bool) -> None:
        if new:
            return
        cons = list(col.constraints or ())
        kinds = {c.contype for c in cons}
        C = enums.ConstrType
        default = next((c for c in cons if c.contype == C.CONSTR_DEFAULT), None)
        tname = _type_name(col.typeName)
        rewrites = None
        if tname in SERIAL_TYPES:
            rewrites = f"{tname} fills every existing row from a sequence"
        elif C.CONSTR_IDENTITY in kinds:
            rewrites = "an identity column fills every existing row from a sequence"
        elif C.CONSTR_GENERATED in kinds:
            rewrites = "a stored generated column is computed for every existing row"
        elif default is not None:
            volatile = sorted(_func_names(default.raw_expr) & self.volatile)
            if volatile:
                rewrites = f"the default calls {', '.join(volatile)}(), which is volatile"
            else:
                self.clear(m, st, "volatile-default",
                           "the default is not volatile: PostgreSQL 11+ stores it once in the "
                           "catalog, no rewrite")
        if rewrites:
            self.flag(m, st, "volatile-default", table,
                      f"adding {table}.{col.colname}: {rewrites}, so the whole table is "
                      "rewritten under ACCESS EXCLUSIVE (reads and writes wait)")
        if C.CONSTR_NOTNULL in kinds and default is None and not rewrites:
            self.flag(m, st, "add-required-column", table,
                      f"{table}.{col.colname} is NOT NULL without a default: the ALTER fails on "
                      "a table with rows, and inserts of the running release fail after it")
        for c in cons:
            if c.contype in (C.CONSTR_CHECK, C.CONSTR_FOREIGN):
                self._add_constraint(m, st, table, c, new, column=col.colname)
            elif c.contype in (C.CONSTR_UNIQUE, C.CONSTR_PRIMARY):
                self._add_constraint(m, st, table, c, new, column=col.colname)

    def _add_constraint(self, m, st, table: str, con: ast.Constraint, new: bool,
                        column: str | None = None) -> None:
        C = enums.ConstrType
        name = con.conname or f"{table}_{column or ''}_{con.contype.name.lower()}"
        if con.contype in (C.CONSTR_CHECK, C.CONSTR_FOREIGN):
            info = {"column": _not_null_check_column(con) if con.contype == C.CONSTR_CHECK
                    else None,
                    "valid": not con.skip_validation,
                    "tx": (m.revision, st.transaction) if st.in_transaction else None}
            self.constraints[(table, name)] = info
            if new:
                return
            kind = "FOREIGN KEY" if con.contype == C.CONSTR_FOREIGN else "CHECK"
            if con.skip_validation:
                self.clear(m, st, "constraint-not-valid-missing", f"{kind} added NOT VALID")
            else:
                if con.contype == C.CONSTR_FOREIGN:
                    ref = ms.name_of(con.pktable)
                    why = (f"FOREIGN KEY {name} scans {table} to validate it while holding SHARE "
                           f"ROW EXCLUSIVE on {table} and {ref}: writes to both wait")
                else:
                    why = (f"CHECK {name} scans {table} to validate it while holding ACCESS "
                           "EXCLUSIVE: reads and writes wait")
                self.flag(m, st, "constraint-not-valid-missing", table, why)
                if info["column"]:
                    self.proven_not_null.add((table, info["column"]))
        elif con.contype in (C.CONSTR_UNIQUE, C.CONSTR_PRIMARY, C.CONSTR_EXCLUSION):
            if new or con.indexname:
                return
            self.flag(m, st, "unique-constraint-builds-index", table,
                      f"the constraint builds its index on {table} while holding ACCESS "
                      "EXCLUSIVE: reads and writes wait for the whole build")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


# --------------------------------------------------------------------------- squawk
def squawk_program() -> str:
    here = Path(sys.executable).parent / "squawk"
    found = str(here) if here.is_file() else shutil.which("squawk")
    if not found:
        raise migrate.MigrationError(
            "the squawk linter is not installed (it comes with the squawk-cli package: uv sync)")
    return found


def squawk_version() -> str:
    out = subprocess.run([squawk_program(), "--version"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip().replace("squawk ", "")


def run_squawk(migrations: list[ms.RenderedMigration]) -> dict[str, list[dict]]:
    """squawk's JSON findings per revision (one file per migration, our statements only)."""
    todo = [m for m in migrations if not m.parse_error and m.lint_sql.strip()]
    if not todo:
        return {}
    with tempfile.TemporaryDirectory(prefix="studyhub-lint-") as tmp:
        files = {}
        for m in todo:
            path = Path(tmp) / f"{m.revision}.sql"
            path.write_text(m.lint_sql)
            files[str(path)] = m.revision
        argv = [squawk_program(), "--reporter", "json", "--pg-version", "15",
                "--no-error-on-unmatched-pattern"]
        for rule in sorted(SQUAWK_EXCLUDED):
            argv += ["--exclude", rule]
        argv += list(files)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SQUAWK"))}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp,
                              env=env)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            if proc.returncode == 0:
                return {}
            raise migrate.MigrationError(
                f"squawk failed (exit {proc.returncode}): "
                f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        out: dict[str, list[dict]] = {}
        for item in json.loads(proc.stdout):
            rev = files.get(item.get("file", "")) or files.get(
                str(Path(tmp) / Path(item.get("file", "")).name))
            if rev:
                out.setdefault(rev, []).append(item)
        return out


def _statement_at(m: ms.RenderedMigration, line0: int, col: int) -> ms.Statement | None:
    lines = m.lint_sql.split("\n")
    offset = sum(len(x) + 1 for x in lines[:line0]) + col
    for st in m.statements:
        if st.start <= offset <= st.end:
            return st
    best = None
    for st in m.statements:
        if st.start <= offset:
            best = st
    return best


# --------------------------------------------------------------------------- acks
def ack_attribute(direction: str) -> str:
    """Where a migration acknowledges findings: LINT_ACK (upgrade), LINT_ACK_DOWNGRADE."""
    return "LINT_ACK_DOWNGRADE" if direction == "downgrade" else "LINT_ACK"


def _acks(module, direction: str = "upgrade") -> dict[str, object]:
    raw = getattr(module, ack_attribute(direction), None) if module is not None else None
    return dict(raw) if isinstance(raw, dict) else {}


def _known_rule(rule: str) -> bool:
    return rule in RULES or rule in SQUAWK_RULES


def _apply_acks(report_findings: list[Finding], migrations: list[ms.RenderedMigration]) -> None:
    for m in migrations:
        acks = _acks(m.module, m.direction)
        attr = ack_attribute(m.direction)
        used: set[str] = set()
        for f in report_findings:
            if f.revision != m.revision:
                continue
            for key in (f"{f.rule}:{f.table}", f.rule):
                reason = acks.get(key)
                if key in acks and isinstance(reason, str) and reason.strip():
                    f.acknowledged = reason.strip()
                    used.add(key)
                    break
        for key, reason in acks.items():
            rule = str(key).split(":", 1)[0]
            if not _known_rule(rule):
                report_findings.append(Finding(
                    m.revision, m.path, 0, 0, f"{attr}[{key!r}]", "ack-unknown-rule", ERROR,
                    None, f"{rule!r} is not a rule of studyhub or squawk",
                    RULES["ack-unknown-rule"].recipe, direction=m.direction))
            elif not isinstance(reason, str) or len(reason.strip()) < 10:
                report_findings.append(Finding(
                    m.revision, m.path, 0, 0, f"{attr}[{key!r}]", "ack-without-reason", ERROR,
                    None, "an acknowledgement needs a reason of at least a few words",
                    RULES["ack-without-reason"].recipe, direction=m.direction))
            elif key not in used:
                report_findings.append(Finding(
                    m.revision, m.path, 0, 0, f"{attr}[{key!r}]", "ack-unused", WARNING,
                    None, f"no finding of {key} in this migration", RULES["ack-unused"].recipe, direction=m.direction))


# --------------------------------------------------------------------------- entry point
def _database_facts(profile, database: str | None) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Table sizes (ops role: pg_monitor is enough) and the volatile functions in pg_proc."""
    from studyhub.connect import connect
    from studyhub.ops.space import table_sizes

    with connect(profile, "ops", database=database, application_name="studyhub migrate lint") as conn:
        space = table_sizes(conn)
        volatile = {r[0] for r in conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE provolatile = 'v'").fetchall()}
    sizes = {}
    for t in space.tables:
        name = t.table if t.schema == "public" else f"{t.schema}.{t.table}"
        sizes[name] = (t.row_estimate, t.total_bytes)
    return sizes, volatile


def lint(rev_range: str | None = None, *, profile=None, database: str | None = None,
         extra_versions: migrate.ExtraVersions = (), use_squawk: bool = True,
         downgrade: bool = False) -> LintReport:
    """Lint the upgrade SQL of every migration in ``rev_range`` (default: all of them), or
    with ``downgrade`` the SQL of their downgrades (newest first, the order they run).

    Earlier migrations are analysed too (what they established — validated checks, indexes —
    matters) but only the range's findings are reported; downgrades are judged from the
    schema the upgrades up to the range's end built. With ``profile`` the findings carry
    table sizes and pg_proc decides which defaults are volatile."""
    everything = ms.render_migrations(None if rev_range is None else _upto(rev_range),
                                      extra_versions=extra_versions)
    wanted = {m.revision for m in (ms.render_migrations(rev_range, extra_versions=extra_versions)
                                   if rev_range else everything)}
    downgrades = ms.render_migrations(rev_range, extra_versions=extra_versions,
                                      downgrade=True) if downgrade else []
    sizes: dict[str, tuple[int, int]] = {}
    volatile = set(KNOWN_VOLATILE)
    sizes_from = sizes_error = None
    if profile is not None:
        try:
            sizes, db_volatile = _database_facts(profile, database)
            volatile |= db_volatile
            sizes_from = f"{profile.name}/{profile.endpoint('ops', database).database}"
        except Exception as exc:  # sizes are a bonus; linting works offline
            sizes_error = str(exc).splitlines()[0]
    analyzer = _Analyzer(volatile, sizes)
    for m in everything:
        analyzer.migration(m)
    if downgrade:  # undo from the range's end, newest first, with what the upgrades built
        analyzer.findings, analyzer.cleared = [], {}
        for m in downgrades:
            analyzer.migration(m)
        reported = downgrades
    else:
        reported = [m for m in everything if m.revision in wanted]
    findings = [f for f in analyzer.findings if f.revision in wanted]
    cleared: list[Cleared] = []
    version = None
    if use_squawk:
        version = squawk_version()
        by_rev = {m.revision: m for m in reported}
        for rev, items in run_squawk(reported).items():
            m = by_rev[rev]
            for item in items:
                st = _statement_at(m, int(item.get("line", 0)), int(item.get("column", 0)))
                if st is None:
                    continue
                _merge_squawk(m, st, item, findings, analyzer, cleared, sizes)
    _apply_acks(findings, reported)
    findings.sort(key=lambda f: ([m.revision for m in reported].index(f.revision)
                                 if f.revision in wanted else 0, f.statement_number))
    return LintReport(rev_range or "base:heads", [m.revision for m in reported], findings,
                      cleared, sizes_from, sizes_error, version,
                      "downgrade" if downgrade else "upgrade")


def _upto(rev_range: str) -> str:
    """The chain from base to the end of ``rev_range`` (earlier migrations set the scene)."""
    lower, sep, upper = rev_range.partition(":")
    return f"base:{upper or 'heads'}" if sep else f"base:{lower}"


def _merge_squawk(m, st, item, findings, analyzer: _Analyzer, cleared, sizes) -> None:
    rule = item.get("rule_name", "")
    ours = SQUAWK_MAP.get(rule, set())
    for f in findings:
        if f.revision == m.revision and f.statement_number == st.number and f.rule in ours:
            if f"squawk:{rule}" not in f.also_flagged_by:
                f.also_flagged_by.append(f"squawk:{rule}")
            return
    reasons = analyzer.cleared.get((m.revision, st.number), {})
    for our_rule in ours:
        if our_rule in reasons:
            cleared.append(Cleared(m.revision, st.number, rule, reasons[our_rule]))
            return
    for f in findings:  # squawk reports a rule once per column: one finding per statement
        if f.source == "squawk" and f.revision == m.revision and \
                f.statement_number == st.number and f.rule == rule:
            f.places += 1
            return
    help_text = (item.get("help") or "").strip()
    table = None
    locks = ms.statement_locks(st.node, analyzer.index_tables) or []
    if locks:
        table = locks[0].table
    rows, size = sizes.get(table or "", (None, None))
    findings.append(Finding(
        m.revision, m.path, st.number, st.line, st.sql, rule,
        ERROR if rule in SQUAWK_ERRORS else WARNING, table,
        (item.get("message") or "").strip(), help_text or "see squawk's documentation",
        source="squawk", table_rows=rows, table_bytes=size, direction=m.direction))


def rules() -> list[Rule]:
    return list(_RULES)
