"""The schema-aware half of ``migrate lint``: walks the chain oldest first, statement by
statement, keeping what earlier statements established (tables this migration creates,
validated NOT NULL checks, the locks the open transaction holds, lock_timeout in force), and
flags what would lock a busy table. One class: its methods each judge one kind of statement
against the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast, enums

from studyhub.ops.migrate import statements as ms
from studyhub.ops.migrate.lint.knowledge import (
    MAX_LOCK_TIMEOUT_MS,
    REWRITE_ALTER_CMDS,
    SERIAL_TYPES,
    describe,
    func_names,
    has_limit,
    judged_by_a_specific_rule,
    mapped_columns,
    not_null_check_column,
    parse_duration_ms,
    type_name_of,
)
from studyhub.ops.migrate.lint.rules import ERROR, RULES, Finding


@dataclass
class _MigrationState:
    """What the statements of one migration have established so far."""

    created: set[str] = field(default_factory=set)  # tables this migration creates
    lock_timeout_ms: int | None = None  # session setting
    local_timeout_ms: int | None = None  # SET LOCAL, until the transaction ends
    tx_locks: dict[str, str] = field(default_factory=dict)  # held until the next commit
    dropped_in_tx: dict[int, set[str]] = field(default_factory=dict)  # transaction → tables


class Analyzer:
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
            why, r.recipe, table_rows=rows, table_bytes=size, direction=m.direction,
            source_line=st.source_line))

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
                ms_value = parse_duration_ms(value) if value is not None else None
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
                      f"{describe(node)} runs code whose statements and locks PostgreSQL "
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
                and not judged_by_a_specific_rule(node):
            held = ("until the migration's transaction commits" if st.in_transaction
                    else "for the whole statement")
            where = f" (inside a {inside})" if inside else ""
            self.flag(m, st, "blocking-table-lock", strongest.table,
                      f"{describe(node)}{where} takes {strongest.mode} on {strongest.table} "
                      f"and holds it {held}: {ms.BLOCKS[strongest.mode]} wait meanwhile")
        if st.in_transaction:
            for lk in locks:
                state.tx_locks[lk.table] = ms.stronger(state.tx_locks.get(lk.table), lk.mode)

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
                if has_limit(node) and not st.in_transaction:
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
            elif sub in REWRITE_ALTER_CMDS:
                if not new:
                    self.flag(m, st, "table-rewrite", table,
                              f"ALTER TABLE {table} {REWRITE_ALTER_CMDS[sub]} copies the whole "
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
        tname = type_name_of(col.typeName)
        rewrites = None
        if tname in SERIAL_TYPES:
            rewrites = f"{tname} fills every existing row from a sequence"
        elif C.CONSTR_IDENTITY in kinds:
            rewrites = "an identity column fills every existing row from a sequence"
        elif C.CONSTR_GENERATED in kinds:
            rewrites = "a stored generated column is computed for every existing row"
        elif default is not None:
            volatile = sorted(func_names(default.raw_expr) & self.volatile)
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
            info = {"column": not_null_check_column(con) if con.contype == C.CONSTR_CHECK
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
