"""Schema migrations (Alembic) as plain functions over a profile: the runbook's "Running
Migrations", and what keeps a migration from locking the app out.

- ``revisions``: which migrations exist, in chain order (files ``NNNN_<slug>.py``), and what a
  downgrade would undo — no database needed;
- ``apply``: ``upgrade`` / ``downgrade`` with lock_timeout, retries with backoff, the blocking
  sessions named, invalid index leftovers dropped; each checks the profile allows changes and
  writes one audit line (``migrate.up`` / ``migrate.up.failed``, ``migrate.down`` /
  ``migrate.down.failed``);
- ``drift``: models vs the database (``compare``), and ``new_revision`` from the difference;
- ``statements``: each migration's SQL rendered offline and parsed, and the table locks each
  statement takes;
- ``lint``: the statements that would lock a busy table (rules, analyzer, squawk, LINT_ACK);
- ``gate``: what ``upgrade`` checks first — lint of exactly the pending migrations, refusing
  unacknowledged errors before connecting for writing (``unsafe_reason`` overrides, audited);
- ``plan``: before applying, each statement's locks, how long they are held, table sizes;
- ``roundtrip``: up → down → up on a throwaway database with a full schema comparison.

Callers use this surface: ``from studyhub.ops import migrate`` then ``migrate.upgrade(...)``,
``migrate.lint.lint(...)``, ``migrate.plan.plan(...)``, ``migrate.roundtrip.roundtrip(...)``.
"""

from studyhub.ops.migrate import gate, lint, plan, roundtrip, statements
from studyhub.ops.migrate.apply import (
    Attempt,
    LockTimeoutError,
    MigrationResult,
    current,
    describe_downgrade,
    downgrade,
    invalid_indexes,
    migration_connection,
    upgrade,
)
from studyhub.ops.migrate.drift import DriftReport, compare, new_revision
from studyhub.ops.migrate.gate import GateResult, UnsafeMigrationError
from studyhub.ops.migrate.revisions import (
    DEFAULT_LOCK_TIMEOUT,
    ExtraVersions,
    MigrationError,
    RevisionInfo,
    downgrade_plan,
    heads,
    history,
    next_revision_id,
    script_directory,
)

__all__ = [
    "DEFAULT_LOCK_TIMEOUT", "Attempt", "DriftReport", "ExtraVersions", "GateResult",
    "LockTimeoutError", "UnsafeMigrationError", "gate",
    "MigrationError", "MigrationResult", "RevisionInfo", "compare", "current",
    "describe_downgrade", "downgrade", "downgrade_plan", "heads", "history", "invalid_indexes",
    "lint", "migration_connection", "new_revision", "next_revision_id", "plan", "roundtrip",
    "script_directory", "statements", "upgrade",
]
