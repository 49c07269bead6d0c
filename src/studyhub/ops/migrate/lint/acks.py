"""LINT_ACK: how a migration acknowledges a finding. The migration module defines
``LINT_ACK`` (its upgrade) or ``LINT_ACK_DOWNGRADE`` (its downgrade), a dict from a rule id (or
``"rule:table"``) to the reason the finding is acceptable there. An acknowledged finding is
reported but is not an error; an ack without a reason or naming an unknown rule is an error;
an ack that matches nothing is a warning (stale acks hide nothing)."""

from __future__ import annotations

import re
from pathlib import Path

from studyhub.ops.migrate import statements as ms
from studyhub.ops.migrate.lint.rules import ERROR, RULES, WARNING, Finding
from studyhub.ops.migrate.lint.squawk import SQUAWK_RULES


def ack_attribute(direction: str) -> str:
    """Where a migration acknowledges findings: LINT_ACK (upgrade), LINT_ACK_DOWNGRADE."""
    return "LINT_ACK_DOWNGRADE" if direction == "downgrade" else "LINT_ACK"


def _acks(module, direction: str = "upgrade") -> dict[str, object]:
    raw = getattr(module, ack_attribute(direction), None) if module is not None else None
    return dict(raw) if isinstance(raw, dict) else {}


def ack_line(module, direction: str = "upgrade") -> int | None:
    """The line of the migration file where its LINT_ACK (or LINT_ACK_DOWNGRADE) is set."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    pattern = re.compile(rf"{ack_attribute(direction)}\b\s*[:=]")
    return next((i for i, ln in enumerate(lines, 1) if pattern.match(ln)), None)


def _known_rule(rule: str) -> bool:
    return rule in RULES or rule in SQUAWK_RULES


def apply_acks(report_findings: list[Finding], migrations: list[ms.RenderedMigration]) -> None:
    """Mark the findings each migration acknowledges, and add a finding for each ack that has
    no reason, names an unknown rule or matches nothing."""
    for m in migrations:
        acks = _acks(m.module, m.direction)
        attr = ack_attribute(m.direction)
        used: set[str] = set()
        at = ack_line(m.module, m.direction) if acks else None
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
                    RULES["ack-unknown-rule"].recipe, direction=m.direction, source_line=at))
            elif not isinstance(reason, str) or len(reason.strip()) < 10:
                report_findings.append(Finding(
                    m.revision, m.path, 0, 0, f"{attr}[{key!r}]", "ack-without-reason", ERROR,
                    None, "an acknowledgement needs a reason of at least a few words",
                    RULES["ack-without-reason"].recipe, direction=m.direction, source_line=at))
            elif key not in used:
                report_findings.append(Finding(
                    m.revision, m.path, 0, 0, f"{attr}[{key!r}]", "ack-unused", WARNING,
                    None, f"no finding of {key} in this migration", RULES["ack-unused"].recipe,
                    direction=m.direction, source_line=at))
