"""migrate lint: each rule flags its dangerous example and passes its safe version; LINT_ACK;
the schema-aware parts (mapped columns, brand-new tables, validated checks, table sizes);
squawk runs; every migration in the repository lints clean (this is how CI lints them)."""

from __future__ import annotations

import json

import pytest

from studyhub.ops import migrate
from studyhub.ops.migrate import lint as migrate_lint
from tests.migration_examples import write_example

# rule: (dangerous upgrade body, safe upgrade body)
CASES = {
    "create-index-not-concurrently": (
        'op.create_index("ix_fr_rating", "flashcard_reviews", ["rating"])',
        'create_index_concurrently("ix_fr_rating", "flashcard_reviews", ["rating"])',
    ),
    "drop-index-not-concurrently": (
        'op.drop_index("ix_flashcard_reviews_revision_session_id", table_name="flashcard_reviews")',
        'drop_index_concurrently("ix_flashcard_reviews_revision_session_id", '
        'table="flashcard_reviews")',
    ),
    "concurrently-in-transaction": (
        'op.create_index("ix_fr_rating", "flashcard_reviews", ["rating"], '
        'postgresql_concurrently=True)',
        'with op.get_context().autocommit_block():\n'
        '    op.create_index("ix_fr_rating", "flashcard_reviews", ["rating"], '
        'postgresql_concurrently=True)',
    ),
    "constraint-not-valid-missing": (
        'op.create_check_constraint("ck_fr_rating_low", "flashcard_reviews", "rating < 10")',
        'add_check_not_valid("flashcard_reviews", "ck_fr_rating_low", "rating < 10")\n'
        'validate_constraint("flashcard_reviews", "ck_fr_rating_low")',
    ),
    "constraint-not-valid-missing:fk": (
        'op.create_foreign_key("fk_ai_session", "ai_interactions", "subjects", '
        '["subject_id"], ["id"])',
        'add_foreign_key_not_valid("ai_interactions", "fk_ai_session", ["subject_id"], '
        '"subjects", ["id"])\n'
        'validate_constraint("ai_interactions", "fk_ai_session")',
    ),
    "validate-in-same-transaction": (
        'op.execute("ALTER TABLE flashcard_reviews ADD CONSTRAINT ck_x CHECK (rating > 0) '
        'NOT VALID")\n'
        'op.execute("ALTER TABLE flashcard_reviews VALIDATE CONSTRAINT ck_x")',
        'add_check_not_valid("flashcard_reviews", "ck_x", "rating > 0")\n'
        'validate_constraint("flashcard_reviews", "ck_x")',
    ),
    "unique-constraint-builds-index": (
        'op.create_unique_constraint("uq_subjects_code_name", "subjects", ["code", "name"])',
        'create_index_concurrently("uq_subjects_code_name", "subjects", ["code", "name"], '
        'unique=True)\n'
        'op.execute("ALTER TABLE subjects ADD CONSTRAINT uq_subjects_code_name '
        'UNIQUE USING INDEX uq_subjects_code_name")',
    ),
    "set-not-null-scans-table": (
        'op.alter_column("flashcard_reviews", "review_duration_ms", nullable=False)',
        'add_not_null("flashcard_reviews", "review_duration_ms")',
    ),
    "add-required-column": (
        'op.add_column("flashcard_reviews", sa.Column("hint_count", sa.Integer(), '
        'nullable=False))',
        'op.add_column("flashcard_reviews", sa.Column("hint_count", sa.Integer(), '
        'nullable=False, server_default="0"))',
    ),
    "column-type-rewrite": (
        'op.alter_column("flashcard_reviews", "rating", type_=sa.Integer())',
        'op.add_column("flashcard_reviews", sa.Column("rating_v2", sa.Integer()))\n'
        'backfill_in_batches("flashcard_reviews", set_sql="rating_v2 = rating", '
        'where_sql="rating_v2 IS NULL")',
    ),
    "volatile-default": (
        'op.add_column("flashcard_reviews", sa.Column("sync_token", sa.Uuid(), '
        'server_default=sa.text("gen_random_uuid()")))',
        'op.add_column("flashcard_reviews", sa.Column("sync_token", sa.Uuid()))\n'
        'op.alter_column("flashcard_reviews", "sync_token", '
        'server_default=sa.text("gen_random_uuid()"))\n'
        'backfill_in_batches("flashcard_reviews", set_sql="sync_token = gen_random_uuid()", '
        'where_sql="sync_token IS NULL")',
    ),
    "drop-mapped-column": (
        'op.drop_column("flashcard_reviews", "review_duration_ms")',
        'op.drop_column("flashcard_reviews", "legacy_score")',  # not mapped: a warning only
    ),
    "drop-mapped-table": (
        'op.drop_table("ai_interactions")',
        'op.execute("DROP TABLE IF EXISTS legacy_import")',
    ),
    "rename-column": (
        'op.alter_column("notes", "title", new_column_name="heading")',
        'op.add_column("notes", sa.Column("heading", sa.Text()))',
    ),
    "rename-table": (
        'op.rename_table("notes", "study_notes")',
        'op.create_table("study_notes", sa.Column("id", sa.Uuid(), primary_key=True))',
    ),
    "lock-timeout-missing": (
        'op.execute("SET lock_timeout = 0")\n'
        'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
        'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
    ),
    "update-in-ddl-transaction": (
        'op.add_column("flashcard_reviews", sa.Column("rating_v2", sa.Integer()))\n'
        'op.execute("UPDATE flashcard_reviews SET rating_v2 = rating")',
        'op.add_column("flashcard_reviews", sa.Column("rating_v2", sa.Integer()))\n'
        'backfill_in_batches("flashcard_reviews", set_sql="rating_v2 = rating", '
        'where_sql="rating_v2 IS NULL")',
    ),
    "table-rewrite": (
        'op.execute("ALTER TABLE flashcard_reviews SET UNLOGGED")',
        'with op.get_context().autocommit_block():\n'
        '    op.execute("VACUUM (ANALYZE) flashcard_reviews")',
    ),
    "truncate-table": (
        'op.execute("TRUNCATE notes")',
        'op.create_table("import_staging", sa.Column("id", sa.Uuid(), primary_key=True))\n'
        'op.execute("TRUNCATE import_staging")',
    ),
    "blocking-table-lock": (
        'op.execute("LOCK TABLE flashcard_reviews IN SHARE ROW EXCLUSIVE MODE")',
        # serialises concurrent migrations without blocking the app's reads and writes
        'op.execute("LOCK TABLE flashcard_reviews IN SHARE UPDATE EXCLUSIVE MODE")',
    ),
    "procedural-code": (
        'op.execute("DO $$ BEGIN EXECUTE format(\'ALTER TABLE %I ALTER COLUMN rating TYPE '
        'integer\', \'flashcard_reviews\'); END $$")',
        # what migration_helpers.grant_to_ops renders: static, no table lock
        'op.execute("DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '
        '\'studyhub_ops\') THEN GRANT SELECT ON notes TO studyhub_ops; END IF; END $$")',
    ),
    "lock-timeout-missing:set_config": (
        'op.execute("SELECT set_config(\'lock_timeout\', \'0\', false)")\n'
        'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
        'op.execute("SELECT set_config(\'lock_timeout\', \'2s\', true)")\n'
        'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
    ),
    "reindex-not-concurrently": (
        'op.execute("REINDEX INDEX ix_notes_student_id")',
        'with op.get_context().autocommit_block():\n'
        '    op.execute("REINDEX INDEX CONCURRENTLY ix_notes_student_id")',
    ),
}


def _lint(tmp_path, body, **kw):
    versions = tmp_path / "versions"
    rev = write_example(versions, body, **kw)
    report = migrate_lint.lint(f"{migrate.heads()[0]}:{rev}", extra_versions=[versions])
    assert report.migrations == [rev]
    return rev, report


def _errors(report):
    return [f for f in report.findings if f.blocking]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_flags_the_dangerous_migration_and_passes_the_safe_one(case, tmp_path):
    rule = case.split(":")[0]
    dangerous, safe = CASES[case]
    severity = migrate_lint.RULES[rule].severity
    rev, report = _lint(tmp_path / "bad", dangerous)
    hits = [f for f in report.findings if f.rule == rule and f.severity == severity
            and not f.acknowledged]
    assert hits, f"{rule} not flagged: {[(f.rule, f.severity) for f in report.findings]}"
    f = hits[0]
    assert f.revision == rev and f.path.endswith(f"{rev}_example.py")
    assert f.statement and f.why and f.recipe and f.line > 0
    assert report.ok == (severity == "warning")
    _, good = _lint(tmp_path / "good", safe)
    assert _errors(good) == [], [(f.rule, f.why) for f in _errors(good)]
    assert not [f for f in good.findings if f.rule == rule]


# What an audit found passing lint with no finding: each must now be flagged.
UNSAFE = {
    'op.execute("TRUNCATE notes")': ("truncate-table", "notes"),
    'op.execute("LOCK TABLE flashcard_reviews IN ACCESS EXCLUSIVE MODE")':
        ("blocking-table-lock", "flashcard_reviews"),
    'op.execute("ALTER TABLE flashcard_reviews SET UNLOGGED")':
        ("table-rewrite", "flashcard_reviews"),
    'op.execute("ALTER TABLE flashcard_reviews SET TABLESPACE pg_default")':
        ("table-rewrite", "flashcard_reviews"),
    'op.execute("CLUSTER flashcard_reviews USING ix_flashcard_reviews_revision_session_id")':
        ("table-rewrite", "flashcard_reviews"),
    'with op.get_context().autocommit_block():\n    op.execute("VACUUM FULL flashcard_reviews")':
        ("table-rewrite", "flashcard_reviews"),
    # static DDL inside a DO block is judged like the same statement outside it
    'op.execute("DO $$ BEGIN ALTER TABLE flashcard_reviews ALTER COLUMN rating TYPE integer; '
    'END $$")': ("column-type-rewrite", "flashcard_reviews"),
    'op.execute("DO $$ BEGIN LOCK TABLE notes IN EXCLUSIVE MODE; END $$")':
        ("blocking-table-lock", "notes"),
    'op.execute("SELECT set_config(\'lock_timeout\',\'0\',false)")\n'
    'op.add_column("notes", sa.Column("pinned", sa.Boolean()))': ("lock-timeout-missing", "notes"),
    'op.execute("SELECT pg_catalog.set_config(\'lock_timeout\', \'2min\', false)")\n'
    'op.add_column("notes", sa.Column("pinned", sa.Boolean()))':
        ("lock-timeout-too-long", "notes"),
    'op.execute("SELECT studyhub_reshape_reviews()")': ("procedural-code", None),
    'op.execute("CALL studyhub_reshape_reviews()")': ("procedural-code", None),
    'op.execute("DO LANGUAGE plpython3u $$ plpy.execute(\'TRUNCATE notes\') $$")':
        ("procedural-code", None),
}


@pytest.mark.parametrize("body", sorted(UNSAFE))
def test_statements_that_lock_or_hide_their_locks_are_flagged(body, tmp_path):
    rule, table = UNSAFE[body]
    _, report = _lint(tmp_path, body)
    hits = [f for f in report.findings if f.rule == rule]
    assert [(f.rule, f.table) for f in hits] == [(rule, table)], \
        [(f.rule, f.table, f.why) for f in report.findings]
    assert report.ok == (migrate_lint.RULES[rule].severity == "warning")


def test_plan_and_lint_agree_on_what_a_do_block_locks(tmp_path):
    """A DO block's static statements have known locks (plan shows them); only run-time SQL
    (EXECUTE, CALL, another language) is unknown — and that is what lint warns about."""
    import pglast

    from studyhub.ops.migrate import statements as ms

    static = pglast.parse_sql("DO $$ BEGIN ALTER TABLE notes ADD COLUMN x text; END $$")[0].stmt
    assert [(lk.table, lk.mode) for lk in ms.statement_locks(static)] == [
        ("notes", "ACCESS EXCLUSIVE")]
    dynamic = pglast.parse_sql("DO $$ BEGIN EXECUTE 'TRUNCATE notes'; END $$")[0].stmt
    assert ms.statement_locks(dynamic) is None


def test_index_and_constraints_on_a_table_created_in_the_same_migration_are_fine(tmp_path):
    _, report = _lint(tmp_path, '''
        op.create_table("decks", sa.Column("id", sa.Uuid(), primary_key=True),
                        sa.Column("student_id", sa.Uuid(), sa.ForeignKey("students.id"),
                                  nullable=False),
                        sa.Column("name", sa.Text(), nullable=False))
        op.create_index("ix_decks_student_id", "decks", ["student_id"])
        op.create_check_constraint("ck_decks_name", "decks", "name <> ''")
        op.create_unique_constraint("uq_decks_student_id_name", "decks", ["student_id", "name"])
    ''')
    assert _errors(report) == [], [(f.rule, f.why) for f in report.findings]
    # The same index on an existing table is an error (the exemption is per migration).
    _, report = _lint(tmp_path / "existing", 'op.create_index("ix_n", "notes", ["title"])')
    assert [f.rule for f in _errors(report)] == ["create-index-not-concurrently"]


def test_dropping_a_column_the_models_no_longer_map_is_only_a_warning(tmp_path):
    _, report = _lint(tmp_path, 'op.drop_column("flashcard_reviews", "legacy_score")')
    assert report.ok
    assert [(f.rule, f.severity) for f in report.findings if f.source == "studyhub"] == [
        ("drop-column", "warning")]


def test_set_not_null_is_safe_only_after_the_check_is_validated(tmp_path):
    # CHECK NOT VALID without VALIDATE does not prove the column: SET NOT NULL still scans.
    _, report = _lint(tmp_path / "a", '''
        add_check_not_valid("flashcard_reviews", "ck_d", "review_duration_ms IS NOT NULL")
        op.alter_column("flashcard_reviews", "review_duration_ms", nullable=False)
    ''')
    assert "set-not-null-scans-table" in [f.rule for f in _errors(report)]
    # Validated in an earlier migration of the chain: safe here.
    first = write_example(tmp_path / "b", '''
        add_check_not_valid("flashcard_reviews", "ck_d", "review_duration_ms IS NOT NULL")
        validate_constraint("flashcard_reviews", "ck_d")
    ''')
    second = write_example(tmp_path / "b", '''
        op.alter_column("flashcard_reviews", "review_duration_ms", nullable=False)
        op.drop_constraint("ck_d", "flashcard_reviews")
    ''', down=first)
    report = migrate_lint.lint(f"{first}:{second}", extra_versions=[tmp_path / "b"])
    assert report.migrations == [second] and _errors(report) == []
    assert any(c.squawk_rule == "adding-not-nullable-field" for c in report.cleared)


def test_acknowledged_findings_are_not_errors(tmp_path, cli):
    dangerous = CASES["create-index-not-concurrently"][0]
    rev, report = _lint(tmp_path / "plain", dangerous)
    assert not report.ok
    ack = ('LINT_ACK = {"create-index-not-concurrently:flashcard_reviews": '
           '"built before launch while flashcard_reviews is still empty"}')
    rev, report = _lint(tmp_path / "acked", dangerous, extra=ack)
    assert report.ok and report.errors == 0
    (f,) = [f for f in report.findings if f.rule == "create-index-not-concurrently"]
    assert f.acknowledged == "built before launch while flashcard_reviews is still empty"
    res = cli("migrate", "lint", f"{migrate.heads()[0]}:{rev}", "--versions-dir",
              tmp_path / "acked" / "versions")
    assert res.exit_code == 0, res.stdout
    assert "acknowledged" in res.stdout and "still empty" in res.stdout


def test_acks_need_a_reason_and_a_real_rule_and_stale_acks_are_reported(tmp_path):
    dangerous = CASES["create-index-not-concurrently"][0]
    _, report = _lint(tmp_path / "a", dangerous,
                      extra='LINT_ACK = {"create-index-not-concurrently": ""}')
    rules = [f.rule for f in _errors(report)]
    assert "ack-without-reason" in rules and "create-index-not-concurrently" in rules
    _, report = _lint(tmp_path / "b", 'op.add_column("notes", sa.Column("x", sa.Text()))',
                      extra='LINT_ACK = {"create-index-not-concurently": "typo in the rule"}')
    assert [f.rule for f in _errors(report)] == ["ack-unknown-rule"]
    _, report = _lint(tmp_path / "c", 'op.add_column("notes", sa.Column("x", sa.Text()))',
                      extra='LINT_ACK = {"drop-mapped-column": "nothing is dropped here at all"}')
    assert report.ok and [f.rule for f in report.findings] == ["ack-unused"]


def test_squawk_runs_and_its_findings_are_merged(tmp_path):
    rev, report = _lint(tmp_path, '''
        op.create_index("ix_fr_rating", "flashcard_reviews", ["rating"])
        op.add_column("notes", sa.Column("source", sa.String(50)))
    ''')
    assert report.squawk and report.squawk[0].isdigit()
    (ix,) = [f for f in report.findings if f.rule == "create-index-not-concurrently"]
    assert "squawk:require-concurrent-index-creation" in ix.also_flagged_by
    varchar = [f for f in report.findings if f.source == "squawk"]
    assert [f.rule for f in varchar] == ["prefer-text-field"]
    assert varchar[0].severity == "warning"


def test_cli_lint_exit_code_and_json(tmp_path, cli):
    versions = tmp_path / "versions"
    rev = write_example(versions, CASES["set-not-null-scans-table"][0])
    rng = f"{migrate.heads()[0]}:{rev}"
    res = cli("migrate", "lint", rng, "--versions-dir", versions)
    assert res.exit_code == 1
    assert rev in res.stdout and "set-not-null-scans-table" in res.stdout
    assert "why:" in res.stdout and "fix:" in res.stdout and "add_not_null" in res.stdout
    res = cli("migrate", "lint", rng, "--versions-dir", versions, "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["ok"] is False and data["errors"] == 1 and data["migrations"] == [rev]
    (f,) = [f for f in data["findings"] if f["severity"] == "error"]
    assert {"revision", "path", "statement_number", "line", "statement", "rule", "why",
            "recipe", "table", "table_rows", "acknowledged", "also_flagged_by"} <= set(f)
    assert f["table"] == "flashcard_reviews"


def test_lint_with_a_profile_reports_table_sizes(tmp_path, migrated):
    versions = tmp_path / "versions"
    rev = write_example(versions, CASES["create-index-not-concurrently"][0])
    report = migrate_lint.lint(f"{migrate.heads()[0]}:{rev}", profile=migrated,
                               extra_versions=[versions])
    assert report.sizes_from == "local/studyhub"
    (f,) = [f for f in report.findings if f.rule == "create-index-not-concurrently"]
    assert f.table_rows is not None and f.table_bytes and f.table_bytes > 0


def test_downgrades_are_linted_and_acknowledged_separately(tmp_path, cli):
    versions = tmp_path / "versions"
    body = 'create_index_concurrently("ix_fr_rating", "flashcard_reviews", ["rating"])'
    plain_drop = 'op.drop_index("ix_fr_rating", table_name="flashcard_reviews")'
    rev = write_example(versions, body, downgrade=plain_drop)
    rng = f"{migrate.heads()[0]}:{rev}"
    assert migrate_lint.lint(rng, extra_versions=[versions]).ok  # the upgrade is safe
    report = migrate_lint.lint(rng, extra_versions=[versions], downgrade=True)
    assert report.direction == "downgrade" and report.migrations == [rev] and not report.ok
    (f,) = _errors(report)
    assert (f.rule, f.table, f.direction) == ("drop-index-not-concurrently", "flashcard_reviews",
                                              "downgrade")
    assert f.statement == "DROP INDEX ix_fr_rating"
    res = cli("migrate", "lint", rng, "--versions-dir", versions, "--downgrade")
    assert res.exit_code == 1 and f"{rev} downgrade" in res.stdout
    assert "drop-index-not-concurrently" in res.stdout
    data = json.loads(cli("migrate", "lint", rng, "--versions-dir", versions, "--downgrade",
                          "--json").stdout)
    assert data["direction"] == "downgrade" and data["findings"][0]["direction"] == "downgrade"
    # LINT_ACK covers the upgrade only; the downgrade has its own LINT_ACK_DOWNGRADE.
    acked = tmp_path / "acked"
    ack = ('LINT_ACK_DOWNGRADE = {"drop-index-not-concurrently": '
           '"rolled back only before launch, while flashcard_reviews is empty"}')
    rev = write_example(acked, body, downgrade=plain_drop, extra=ack)
    report = migrate_lint.lint(f"{migrate.heads()[0]}:{rev}", extra_versions=[acked],
                               downgrade=True)
    assert report.ok and report.acknowledged == 1
    wrong = tmp_path / "wrong"
    rev = write_example(wrong, body, downgrade=plain_drop, extra=ack.replace("_DOWNGRADE", ""))
    report = migrate_lint.lint(f"{migrate.heads()[0]}:{rev}", extra_versions=[wrong],
                               downgrade=True)
    assert not report.ok


def test_a_downgrade_dropping_a_mapped_column_warns_of_data_loss(tmp_path):
    """Undoing a release drops what it added: a warning (data loss), not the upgrade's
    drop-mapped-column error; an index dropped with its table is no finding of its own."""
    versions = tmp_path / "versions"
    rev = write_example(versions, 'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
                        downgrade='op.drop_column("notes", "title")')
    report = migrate_lint.lint(f"{migrate.heads()[0]}:{rev}", extra_versions=[versions],
                               downgrade=True)
    ours = [(f.rule, f.severity) for f in report.findings if f.source == "studyhub"]
    assert ours == [("drop-column", "warning")]
    report = migrate_lint.lint("base:0001", downgrade=True)
    assert not [f for f in report.findings if f.rule == "drop-index-not-concurrently"]
    assert {f.rule for f in report.findings} == {"drop-table"}
    assert all(f.acknowledged for f in report.findings)


def test_every_migration_in_the_repository_lints_clean(cli):
    """CI runs this on every migration: an unacknowledged error fails the build — in the
    upgrades and in the downgrades."""
    res = cli("migrate", "lint")
    assert res.exit_code == 0, res.stdout
    res = cli("migrate", "lint", "--downgrade")
    assert res.exit_code == 0, res.stdout
    downgrades = migrate_lint.lint(downgrade=True)
    assert downgrades.migrations == [r.revision for r in migrate.history()]  # newest first
    assert downgrades.errors == 0
    report = migrate_lint.lint()
    assert report.migrations == [r.revision for r in reversed(migrate.history())]
    assert report.errors == 0
    # The initial schema creates its tables and their indexes together: nothing to flag.
    assert not [f for f in report.findings if f.revision == "0001" and f.source == "studyhub"]
    # The worked example uses every safe recipe: no finding of ours, nothing acknowledged.
    assert not [f for f in report.findings if f.revision == "m01"]
