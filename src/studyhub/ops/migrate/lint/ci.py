"""``migrate lint``'s report where CI users read it: GitHub Actions workflow commands
(annotations on the migration file's lines) and SARIF 2.1.0 (GitHub code scanning's upload
format). Pure functions of a ``LintReport``: no printing.

Lines are the migration file's (``Finding.source_line``: the call that emits the statement, or
the ``LINT_ACK`` line of an ack finding); paths are relative to the repository root when the
file is inside it (as ``migrate lint`` shows them).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from studyhub.ops.migrate.lint.acks import ack_attribute
from studyhub.ops.migrate.lint.report import LintReport
from studyhub.ops.migrate.lint.rules import ERROR, RULES, Finding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
TOOL_NAME = "studyhub migrate lint"


def _escape_data(text: str) -> str:
    """A workflow command's message (GitHub's escaping: %, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value (also ':' and ',')."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _title(f: Finding) -> str:
    table = f" on {f.table}" if f.table else ""
    direction = " downgrade" if f.direction == "downgrade" else ""
    return f"{f.rule}{table} ({f.revision}{direction})"


def _message(f: Finding) -> str:
    parts = [f.why]
    if f.statement:
        text = f.statement if len(f.statement) <= 200 else f.statement[:197] + "…"
        parts.append(f"statement: {text}")
    parts.append(f"fix: {f.recipe}")
    if not f.rule.startswith("ack-") and f.rule != "unparsable-sql":
        key = f"{f.rule}:{f.table}" if f.table else f.rule
        parts.append(f"or acknowledge it: {ack_attribute(f.direction)} = "
                     f'{{"{key}": "<why it is safe here>"}}')
    return "\n".join(parts)


def github_commands(report: LintReport) -> list[str]:
    """One ``::error`` / ``::warning`` workflow command per unacknowledged finding, with the
    migration file and line (GitHub shows it on that line of the pull request)."""
    out = []
    for f in report.findings:
        if f.acknowledged:
            continue
        level = "error" if f.severity == ERROR else "warning"
        props = [f"file={_escape_property(f.path)}", f"line={f.source_line or 1}",
                 f"title={_escape_property(_title(f))}"]
        out.append(f"::{level} {','.join(props)}::{_escape_data(_message(f))}")
    return out


def _studyhub_version() -> str:
    try:
        return version("studyhub")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _artifact(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_absolute():  # a draft outside the repository (--versions-dir)
        return {"uri": p.as_uri()}
    return {"uri": p.as_posix(), "uriBaseId": "%SRCROOT%"}


def sarif(report: LintReport) -> dict[str, Any]:
    """The report as one SARIF 2.1.0 run: ``tool.driver.rules`` (our rules, with their safe
    recipe as help, and the squawk rules that fired), one result per finding with its
    physical location; an acknowledged finding carries an in-source suppression whose
    justification is its LINT_ACK reason."""
    rules: list[dict[str, Any]] = [
        {"id": r.id, "name": r.id, "shortDescription": {"text": r.title},
         "help": {"text": r.recipe}, "defaultConfiguration": {"level": r.severity},
         "properties": {"source": "studyhub"}}
        for r in RULES.values()]
    index = {r["id"]: i for i, r in enumerate(rules)}
    for f in report.findings:
        if f.rule not in index:  # squawk's rules, as they fire
            index[f.rule] = len(rules)
            rules.append({"id": f.rule, "name": f.rule,
                          "shortDescription": {"text": f"squawk: {f.rule}"},
                          "help": {"text": f.recipe},
                          "defaultConfiguration": {"level": f.severity},
                          "properties": {"source": f.source}})
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.rule, "ruleIndex": index[f.rule],
            "level": "error" if f.severity == ERROR else "warning",
            "message": {"text": _message(f)},
            "locations": [{"physicalLocation": {
                "artifactLocation": _artifact(f.path),
                "region": {"startLine": f.source_line or 1}}}],
            "properties": {"revision": f.revision, "direction": f.direction,
                           "statementNumber": f.statement_number, "table": f.table,
                           "alsoFlaggedBy": f.also_flagged_by},
        }
        if f.acknowledged:
            result["suppressions"] = [{"kind": "inSource", "status": "accepted",
                                       "justification": f.acknowledged}]
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "version": _studyhub_version(),
                                "rules": rules}},
            "automationDetails": {"id": f"studyhub-migrate-lint/{report.direction}/"},
            "results": results,
            "properties": {"range": report.rev_range, "migrations": report.migrations,
                           "squawk": report.squawk},
        }],
    }
