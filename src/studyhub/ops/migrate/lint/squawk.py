"""The squawk bridge: runs squawk (the ``squawk-cli`` wheel's binary) on each migration's
statements and merges its findings into ours — where squawk and a rule of ours flag the same
statement the finding names both; where our schema knowledge clears a statement squawk flags,
its warning is dropped and the reason kept; its other findings are warnings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from studyhub.ops.migrate import statements as ms
from studyhub.ops.migrate.lint.analyzer import Analyzer
from studyhub.ops.migrate.lint.rules import ERROR, WARNING, Cleared, Finding
from studyhub.ops.migrate.revisions import MigrationError

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


def squawk_program() -> str:
    here = Path(sys.executable).parent / "squawk"
    found = str(here) if here.is_file() else shutil.which("squawk")
    if not found:
        raise MigrationError(
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
            raise MigrationError(
                f"squawk failed (exit {proc.returncode}): "
                f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        out: dict[str, list[dict]] = {}
        for item in json.loads(proc.stdout):
            rev = files.get(item.get("file", "")) or files.get(
                str(Path(tmp) / Path(item.get("file", "")).name))
            if rev:
                out.setdefault(rev, []).append(item)
        return out


def statement_at(m: ms.RenderedMigration, line0: int, col: int) -> ms.Statement | None:
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


def merge_squawk(m, st, item, findings, analyzer: Analyzer, cleared, sizes) -> None:
    """Merge one squawk finding on statement ``st`` of migration ``m`` into ``findings``:
    named on our finding of the same danger, dropped (into ``cleared``) where the analyzer
    cleared that danger, else a finding of its own."""
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
        source="squawk", table_rows=rows, table_bytes=size, direction=m.direction,
        source_line=st.source_line))

