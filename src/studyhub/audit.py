"""Audit lines for every destructive command: who, when, what, on which profile.

One JSON object per line in ``$STUDYHUB_AUDIT_LOG`` (default ``$STUDYHUB_HOME/audit.log``),
appended with O_APPEND and mode 0600. Callers pass names, ids, counts and fingerprints only —
never query text, personal data or secrets.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studyhub.paths import studyhub_home


def audit_path() -> Path:
    raw = os.environ.get("STUDYHUB_AUDIT_LOG")
    return Path(raw) if raw else studyhub_home() / "audit.log"


def operator() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def write_audit(action: str, profile: str, **details: Any) -> dict[str, Any]:
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "operator": operator(),
        "profile": profile,
        "action": action,
        **details,
    }
    path = audit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, default=str, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)
    return record


def read_audit(limit: int | None = None) -> list[dict[str, Any]]:
    path = audit_path()
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if limit:
        lines = lines[-limit:]
    return [json.loads(line) for line in lines if line.strip()]
