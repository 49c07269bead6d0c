"""Pages whose ops modules may not be installed yet: backups (``studyhub.ops.backup_set``)
and the privacy erasure audit (``studyhub.ops.privacy``). Imported under a guard, so the
dashboard runs (and says "not available") without them."""

from __future__ import annotations

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


def privacy_context(conn: Any) -> dict[str, Any]:
    raise NotImplementedError
