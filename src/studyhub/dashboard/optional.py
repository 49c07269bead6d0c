"""Pages whose ops modules may not be installed yet: backups (``studyhub.ops.backup_set``)
and the privacy erasure audit (``studyhub.ops.privacy``). Imported under a guard, so the
dashboard runs (and says "not available") without them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

try:  # pragma: no cover - depends on which branches have landed
    from studyhub.ops import backup_set as backups
    backups_missing = None
except ImportError as exc:
    backups = None
    backups_missing = f"backups are not available in this installation ({exc.name} is missing)"

try:  # pragma: no cover
    from studyhub.ops import privacy
    privacy_missing = None
except ImportError as exc:
    privacy = None
    privacy_missing = ("the privacy audit is not available in this installation "
                       f"({exc.name} is missing)")


def backups_context(profile: Any) -> dict[str, Any]:
    raise NotImplementedError


def privacy_context(conn: Any, view: Any, settings: Any) -> dict[str, Any]:
    """The personal-data policy (ops role), the erasure ledger as counts (app role: only it may
    read the ledger) and the privacy lines of this machine's audit log, counted by action.
    Counts only: no ids, no pseudonyms, no names."""
    import psycopg

    from studyhub.audit import read_audit
    from studyhub.connect import first_line
    from studyhub.dashboard.context import connection
    from studyhub.errors import StudyhubError

    assert privacy is not None
    ctx: dict[str, Any] = {"policy": None, "policy_error": None, "erasures": None,
                           "erasures_error": None}
    try:
        ctx["policy"] = privacy.policy_report(conn)
    except (StudyhubError, psycopg.Error) as exc:
        ctx["policy_error"] = first_line(exc)
    try:
        with connection(view, settings, "app") as app_conn:
            ctx["erasures"] = privacy.erasure_audit(app_conn)
    except (StudyhubError, psycopg.Error) as exc:
        ctx["erasures_error"] = first_line(exc)
    since = datetime.now(timezone.utc) - timedelta(days=30)
    counts: dict[str, list[int]] = {}
    for line in read_audit():
        action = str(line.get("action", ""))
        if line.get("profile") != view.name or not action.startswith("privacy."):
            continue
        total_recent = counts.setdefault(action, [0, 0])
        total_recent[0] += 1
        try:
            if datetime.fromisoformat(str(line.get("time"))) >= since:
                total_recent[1] += 1
        except ValueError:
            pass
    ctx["audit_counts"] = sorted((a, n[0], n[1]) for a, n in counts.items())
    return ctx
