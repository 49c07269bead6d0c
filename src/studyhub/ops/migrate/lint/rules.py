"""What ``studyhub migrate lint`` checks: each rule's id, severity, title and safe recipe
(``studyhub migrate lint --rules``), and what a finding says."""

from __future__ import annotations

from dataclasses import dataclass, field

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


def rules() -> list[Rule]:
    return list(_RULES)


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
    # the line of the migration file (path) the statement comes from, or its LINT_ACK's line;
    # None for statements Alembic itself adds
    source_line: int | None = None

    @property
    def blocking(self) -> bool:
        return self.severity == ERROR and self.acknowledged is None


@dataclass
class Cleared:
    revision: str
    statement_number: int
    squawk_rule: str
    reason: str

