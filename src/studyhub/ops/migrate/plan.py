"""``studyhub migrate plan``: before applying, which statements will run, which table locks
each takes (and what that lock blocks), how long it is held, and how big those tables are.

A lock taken inside a transaction is held until that transaction commits, so a brief ALTER
followed by a long UPDATE in the same transaction blocks for the whole UPDATE: ``held_until``
says which. Lock modes come from ``statements.statement_locks``; sizes from the
target database's statistics (pg_class.reltuples, pg_total_relation_size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast

from studyhub.connect import connect
from studyhub.ops.migrate import statements as ms
from studyhub.ops.migrate.apply import current as current_revisions
from studyhub.ops.migrate.lint import lint
from studyhub.ops.migrate.lint.knowledge import has_limit
from studyhub.ops.migrate.revisions import (
    ExtraVersions,
    MigrationError,
    downgrade_plan,
    heads,
)
from studyhub.ops.queries import load
from studyhub.ops.space import table_sizes
from studyhub.profiles import Profile


@dataclass
class PlannedLock:
    table: str
    mode: str
    blocks: str
    rows_estimate: int | None
    total_bytes: int | None


@dataclass
class PlannedStatement:
    number: int
    line: int
    sql: str
    in_transaction: bool
    held_until: str  # "statement end" or "commit of transaction N (after statement M)"
    locks: list[PlannedLock] | None  # None: cannot be told (DO block, procedure call)
    lint: list[str] = field(default_factory=list)  # rule ids our linter raises here


@dataclass
class PlannedMigration:
    revision: str
    message: str
    path: str
    statements: list[PlannedStatement]


@dataclass
class PlannedTable:
    table: str
    strongest_mode: str
    rows_estimate: int | None
    total_bytes: int | None


@dataclass
class MigrationPlan:
    profile: str
    database: str
    current: list[str]
    target: str
    migrations: list[PlannedMigration]
    tables: list[PlannedTable]
    direction: str = "upgrade"  # upgrade | downgrade (what `migrate down` would run)


def _index_tables_in_db(conn) -> dict[str, str]:
    return dict(conn.execute(load("get_index_tables")).fetchall())


def _target_facts(profile: Profile, database: str | None):
    """(table → (rows, bytes), index → table, database name) of the target database."""
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub migrate plan") as conn:
        space = table_sizes(conn)
        index_tables = ms.index_tables_from_models() | _index_tables_in_db(conn)
        dbname = conn.info.dbname
    sizes = {}
    for t in space.tables:
        sizes[t.table if t.schema == "public" else f"{t.schema}.{t.table}"] = (
            t.row_estimate, t.total_bytes)
    return sizes, index_tables, dbname


def plan(profile: Profile, to: str = "heads", *, database: str | None = None,
         extra_versions: ExtraVersions = ()) -> MigrationPlan:
    current = current_revisions(profile, database)
    if len(current) > 1:
        raise MigrationError("the database has several heads; plan one branch with --to")
    start = current[0] if current else "base"
    target_heads = heads(extra_versions) if to in ("head", "heads") else [to]
    if sorted(current) == sorted(target_heads):
        migrations: list[ms.RenderedMigration] = []
    else:
        migrations = ms.render_migrations(f"{start}:{to}", extra_versions=extra_versions)
    sizes, index_tables, dbname = _target_facts(profile, database)
    flagged = _lint_flags(f"{start}:{to}", migrations, extra_versions, downgrade=False)
    planned, tables = _plan_statements(migrations, sizes, index_tables, flagged)
    return MigrationPlan(profile.name, dbname, current, ",".join(target_heads), planned, tables,
                         "upgrade")


def plan_downgrade(profile: Profile, to: str, *, database: str | None = None,
                   extra_versions: ExtraVersions = ()) -> MigrationPlan:
    """What ``migrate down --to`` would run: each undone migration's downgrade SQL (newest
    first), the locks each statement takes, how long they are held, the tables' sizes."""
    current = current_revisions(profile, database)
    undo = downgrade_plan(current, to)
    migrations: list[ms.RenderedMigration] = []
    rev_range = None
    if undo:
        rev_range = f"{undo[-1].down_revision or 'base'}:{undo[0].revision}"
        migrations = ms.render_migrations(rev_range, extra_versions=extra_versions,
                                          downgrade=True)
    sizes, index_tables, dbname = _target_facts(profile, database)
    flagged = _lint_flags(rev_range, migrations, extra_versions, downgrade=True)
    planned, tables = _plan_statements(migrations, sizes, index_tables, flagged)
    target = (undo[-1].down_revision or "base") if undo else (",".join(current) or "base")
    return MigrationPlan(profile.name, dbname, current, target, planned, tables, "downgrade")


def _lint_flags(rev_range, migrations, extra_versions, *, downgrade: bool):
    """(revision, statement number) → the rule ids lint raises there (unacknowledged)."""
    flagged: dict[tuple[str, int], list[str]] = {}
    if migrations:
        report = lint(rev_range, extra_versions=extra_versions, use_squawk=False,
                               downgrade=downgrade)
        for f in report.findings:
            if not f.acknowledged:
                flagged.setdefault((f.revision, f.statement_number), []).append(f.rule)
    return flagged


def _plan_statements(migrations, sizes, index_tables, flagged):
    planned: list[PlannedMigration] = []
    strongest: dict[str, str] = {}
    for m in migrations:
        if m.parse_error:
            raise MigrationError(f"migration {m.revision}: {m.parse_error}")
        # the last statement of each transaction: its locks are released after it
        commit_at: dict[int, int] = {}
        for st in m.statements:
            if st.in_transaction and st.transaction is not None \
                    and not isinstance(st.node, ast.TransactionStmt):
                commit_at[st.transaction] = st.number
        out = []
        for st in m.statements:
            if isinstance(st.node, ast.TransactionStmt):
                continue
            raw_locks = ms.statement_locks(st.node, index_tables)
            locks = None
            if raw_locks is not None:
                locks = []
                for lk in raw_locks:
                    rows, size = sizes.get(lk.table, (None, None))
                    locks.append(PlannedLock(lk.table, lk.mode, lk.blocks, rows, size))
                    strongest[lk.table] = ms.stronger(strongest.get(lk.table), lk.mode)
            if st.in_transaction and st.transaction is not None:
                held = (f"commit of transaction {st.transaction} "
                        f"(after statement {commit_at.get(st.transaction, st.number)})")
            elif ms.modified_tables(st.node) and has_limit(st.node):
                held = "end of each batch (committed batch by batch)"
            else:
                held = "statement end"
            out.append(PlannedStatement(st.number, st.line, st.sql, st.in_transaction, held,
                                        locks, flagged.get((m.revision, st.number), [])))
        planned.append(PlannedMigration(m.revision, m.message, m.path, out))
    tables = [PlannedTable(t, mode, *sizes.get(t, (None, None)))
              for t, mode in sorted(strongest.items(), key=lambda kv: -ms.strength(kv[1]))]
    return planned, tables
