"""``studyhub migrate lint``: find the migration statements that would lock a busy table.

Each migration is rendered alone (Alembic offline mode, ``migrate.statements``), parsed with
PostgreSQL's own parser (pglast) and checked twice:

- by our rules (``rules``), which know this schema (``knowledge``, ``analyzer``): which
  columns the models still map, which tables the same migration creates (an index on a
  brand-new table is harmless), which NOT NULL checks were validated earlier in the chain,
  which transaction each statement runs in, and — with a profile — how big each table is;
- by squawk (``squawk``: the ``squawk-cli`` wheel's binary). Where squawk and a rule of ours
  flag the same statement, the finding names both; where our schema knowledge clears a
  statement squawk flags (e.g. SET NOT NULL after a validated CHECK), the squawk warning is
  dropped and the reason kept in ``cleared``; squawk's other findings are warnings.

Acknowledging a finding (``acks``): the migration module defines ``LINT_ACK``, a dict from a
rule id (or ``"rule:table"``) to the reason it is acceptable there::

    LINT_ACK = {
        "create-index-not-concurrently:ops.snapshots": "written hourly by the toolkit only; "
        "the SHARE lock lasts well under a second",
    }

An acknowledged finding is reported but is not an error. An ack without a reason, or naming an
unknown rule, is an error; an ack that matches nothing is a warning (stale acks hide nothing).

CI output (``ci``): ``github_commands`` (workflow commands: annotations on the migration's
lines) and ``sarif`` (SARIF 2.1.0 for code scanning).

Public surface: ``lint`` → ``LintReport`` (of ``Finding`` and ``Cleared``), ``rules()`` /
``RULES``, ``SQUAWK_EXCLUDED`` (squawk rules not run, and why), ``ack_attribute``.
"""

from studyhub.ops.migrate.lint import ci
from studyhub.ops.migrate.lint.acks import ack_attribute
from studyhub.ops.migrate.lint.report import LintReport, lint
from studyhub.ops.migrate.lint.rules import ERROR, RULES, WARNING, Cleared, Finding, Rule, rules
from studyhub.ops.migrate.lint.squawk import SQUAWK_EXCLUDED, squawk_version

__all__ = [
    "ERROR", "RULES", "ci", "SQUAWK_EXCLUDED", "WARNING", "Cleared", "Finding", "LintReport", "Rule",
    "ack_attribute", "lint", "rules", "squawk_version",
]
