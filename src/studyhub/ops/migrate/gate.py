"""The apply-time gate (strong_migrations' model): before ``upgrade`` connects for writing, it
lints exactly the migrations it is about to apply — the revisions between the database's
``alembic_version`` and the target — and refuses unacknowledged errors, naming each finding,
the file and line it comes from, and the ``LINT_ACK`` entry that would allow it.

CI lints the repository's migrations offline; the gate closes the other path, a migration
written elsewhere (a branch, a hotfix, ``--versions-dir``) applied directly. An explicit
one-off override (``unsafe_reason``, the CLI's ``--unsafe "reason"``) lets such a run through:
the reason must say something (at least ten characters, like a LINT_ACK's), it is refused on
a protected profile (production) unless that profile was named explicitly, and ``upgrade``
writes the reason and the overridden findings to its audit line.

Reading the revision is a read-only session (``default_transaction_read_only``); the table
sizes and volatile functions lint uses come from the ops role. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from studyhub.connect import connect
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.migrate.lint import lint
from studyhub.ops.migrate.lint.acks import ack_attribute
from studyhub.ops.migrate.lint.rules import Finding
from studyhub.ops.migrate.revisions import ExtraVersions, MigrationError, heads, history
from studyhub.ops.queries import load
from studyhub.profiles import Profile

MIN_REASON_CHARS = 10  # as a LINT_ACK's reason
REFUSED_BEFORE = "before connecting for writing"


@dataclass
class GateResult:
    profile: str
    database: str
    current: list[str]  # the database's revision(s) before
    target: str
    pending: list[str]  # the revisions upgrade would apply, oldest first
    blocking: list[Finding] = field(default_factory=list)  # unacknowledged errors
    acknowledged: list[Finding] = field(default_factory=list)
    warnings: int = 0
    unsafe_reason: str | None = None  # the override, when one was given
    squawk: str | None = None

    @property
    def ok(self) -> bool:
        """No unacknowledged error in what would be applied."""
        return not self.blocking

    @property
    def allowed(self) -> bool:
        """Upgrade may go on: nothing to refuse, or an explicit override."""
        return self.ok or self.unsafe_reason is not None


class UnsafeMigrationError(MigrationError):
    """The gate refused: unacknowledged lint errors in the pending migrations, no override."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(refusal(result))
        self.result = result


def where(f: Finding) -> str:
    """``path:line`` of a finding in the migration file (the line of the call that emits the
    statement, or of its LINT_ACK)."""
    return f"{f.path}:{f.source_line}" if f.source_line else f.path


def acknowledgement(f: Finding) -> str:
    """What would allow the finding: the LINT_ACK entry (or, for a broken ack, the fix)."""
    if f.rule.startswith("ack-") or f.rule == "unparsable-sql":
        return f.recipe
    key = f"{f.rule}:{f.table}" if f.table else f.rule
    return (f'acknowledge it with {ack_attribute(f.direction)} = {{"{key}": '
            '"<why it is safe here>"}')


def describe(f: Finding) -> str:
    """One line per finding: revision, file:line, rule, table, why, the acknowledgement."""
    table = f" on {f.table}" if f.table else ""
    return f"{f.revision} {where(f)} {f.rule}{table}: {f.why}; {acknowledgement(f)}"


def refusal(result: GateResult) -> str:
    lines = [f"refusing to apply {', '.join(result.pending)} to {result.profile}/"
             f"{result.database}: {len(result.blocking)} unacknowledged lint error(s); nothing "
             f"was applied (refused {REFUSED_BEFORE})"]
    lines += [f"  {describe(f)}" for f in result.blocking]
    lines.append("fix the migration (studyhub migrate lint shows the safe recipe), acknowledge "
                 "the finding in its LINT_ACK, or override once with --unsafe \"reason\" "
                 "(audited)")
    return "\n".join(lines)


def check_unsafe_reason(profile: Profile, reason: str | None) -> str | None:
    """The override's reason, stripped; refused when it says nothing, and on a protected
    profile (production) unless the profile was named explicitly. No connection."""
    if reason is None:
        return None
    reason = " ".join(reason.split())
    if len(reason) < MIN_REASON_CHARS:
        raise StudyhubError(f"--unsafe needs a reason of at least {MIN_REASON_CHARS} "
                            "characters (why this migration is safe to apply anyway)")
    if profile.protected and not profile.explicit:
        raise RefusedError(f"refusing to override the migration gate (--unsafe) on "
                           f"{profile.name}: name it explicitly with --profile {profile.name}")
    return reason


def read_revision(profile: Profile, database: str | None = None) -> tuple[list[str], str]:
    """The database's revision(s) (alembic_version; [] when never migrated) and its name, read
    in a read-only session."""
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub migrate gate") as conn:
        conn.execute("SET default_transaction_read_only = on")
        try:
            revisions = list(conn.execute(load("get_alembic_revision")).fetchone()[0])
        except psycopg.errors.UndefinedTable:
            revisions = []
        return revisions, conn.info.dbname


def _relative_target(start: str, to: str, extra_versions: ExtraVersions) -> str:
    """``+N`` (N steps up from ``start``) as a revision id; anything else unchanged."""
    if not (to.startswith("+") and to[1:].isdigit()):
        return to
    children: dict[str | None, list[str]] = {}
    for r in history(extra_versions):
        children.setdefault(r.down_revision, []).append(r.revision)
    rev: str | None = None if start == "base" else start
    for _ in range(int(to[1:])):
        nxt = children.get(rev) or []
        if len(nxt) != 1:
            raise MigrationError(f"cannot go {to} from {start}: "
                                 + ("no later migration" if not nxt else "the chain branches"))
        rev = nxt[0]
    return rev or "base"


def gate(profile: Profile, to: str = "head", *, database: str | None = None,
         extra_versions: ExtraVersions = (), unsafe_reason: str | None = None) -> GateResult:
    """Lint what ``upgrade(profile, to)`` would apply on the database, as ``migrate lint``
    would (our rules, squawk, LINT_ACK; sizes and volatile functions from the profile).
    Returns the unacknowledged errors (``blocking``) and acknowledged findings; ``allowed``
    says whether upgrade may go on. Nothing is written; refuses a bad ``unsafe_reason``
    before connecting."""
    reason = check_unsafe_reason(profile, unsafe_reason)
    current, dbname = read_revision(profile, database)
    if len(current) > 1:
        raise MigrationError("the database has several heads; upgrade one branch with --to")
    start = current[0] if current else "base"
    target = _relative_target(start, to, extra_versions)
    target_heads = heads(extra_versions) if target in ("head", "heads") else [target]
    result = GateResult(profile.name, dbname, current, ",".join(target_heads), [],
                        unsafe_reason=reason)
    if sorted(current) == sorted(target_heads):
        return result
    report = lint(f"{start}:{target}", profile=profile, database=database,
                  extra_versions=extra_versions)
    result.pending = report.migrations
    result.blocking = [f for f in report.findings if f.blocking]
    result.acknowledged = [f for f in report.findings if f.acknowledged]
    result.warnings = report.warnings
    result.squawk = report.squawk
    return result


def audit_details(result: GateResult) -> dict[str, Any]:
    """What the audit line of ``migrate.up`` says of the gate (and of an override)."""
    details: dict[str, Any] = {"gate": {
        "pending": result.pending, "errors": len(result.blocking),
        "acknowledged": len(result.acknowledged)}}
    if result.blocking:
        details["gate"]["findings"] = [
            {"revision": f.revision, "rule": f.rule, "table": f.table, "path": f.path,
             "line": f.source_line} for f in result.blocking]
    if result.unsafe_reason is not None:
        details["unsafe_reason"] = result.unsafe_reason
    return details
