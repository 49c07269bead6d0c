"""Pages whose ops modules may not be installed: backup sets (``studyhub.ops.backup_set``) and
the privacy erasure audit (``studyhub.ops.privacy``). Imported under a guard, so the dashboard
runs (and says "not available") without them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

try:  # pragma: no cover - depends on which branches have landed
    from studyhub.ops import backup_set as backups
    backups_missing = None
except ImportError:
    backups = None
    backups_missing = ("backup sets are not available in this installation "
                       "(studyhub.ops.backup_set is not installed)")

try:  # pragma: no cover
    from studyhub.ops import privacy
    privacy_missing = None
except ImportError:
    privacy = None
    privacy_missing = ("the privacy audit is not available in this installation "
                       "(studyhub.ops.privacy is not installed)")


def _age_s(iso_time: str | None) -> float | None:
    if not iso_time:
        return None
    try:
        when = datetime.fromisoformat(iso_time)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds()


def backups_context(profile: Any) -> dict[str, Any]:
    """The provider's backups and recoverable window (``ops.cluster``: DigitalOcean's API, or
    the local base backups and WAL archive), and our verified logical backup sets of this
    profile (``ops.backup_set``, when installed) with their verification and age. Needs no
    database connection: it still shows when the database is down."""
    from studyhub.connect import first_line
    from studyhub.errors import StudyhubError
    from studyhub.ops import cluster

    ctx: dict[str, Any] = {"cluster": None, "cluster_error": None, "sets": None,
                           "leftovers": [], "sets_missing": backups_missing,
                           "backup_dir": None}
    try:
        ctx["cluster"] = cluster.backend_for(profile).backups()
    except StudyhubError as exc:
        ctx["cluster_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - an API or tool failure is shown, not raised
        ctx["cluster_error"] = first_line(exc)
    if ctx["cluster"] is not None and ctx["cluster"].backups:
        newest = max(b.finished_at or b.created_at for b in ctx["cluster"].backups)
        ctx["cluster_newest_age_s"] = (datetime.now(timezone.utc) - newest).total_seconds()
    if backups is not None:
        ctx["backup_dir"] = str(backups.default_backup_dir())
        listed = backups.list_sets()
        ctx["sets"] = [(s, _age_s(s.created_at), _age_s((s.verified or {}).get("time")))
                       for s in listed if s.status == "complete" and s.profile == profile.name]
        ctx["leftovers"] = [s for s in listed if s.status != "complete"]
    return ctx


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
