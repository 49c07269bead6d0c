"""Audit lines for every change: who, when, what, on which profile, and how it ended.

One JSON object per line in ``$STUDYHUB_AUDIT_LOG`` (default ``$STUDYHUB_HOME/audit.log``),
appended with O_APPEND and mode 0600. Callers pass names, ids, counts and fingerprints only —
never query text, personal data or secrets.

Mutating ops functions audit themselves with ``audited`` (one line whether the work succeeds,
fails or is interrupted), so no renderer can forget it and a failure is on record too.

Work done on someone's behalf — ``studyhub agent`` running a scheduled backup — names them as
``actor`` (``acting_as("agent ops-1")`` around the work, or ``write_audit(..., actor=...)``);
``operator`` stays the OS user the process runs as.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from studyhub.errors import StudyhubError
from studyhub.paths import studyhub_home


def audit_path() -> Path:
    raw = os.environ.get("STUDYHUB_AUDIT_LOG")
    return Path(raw) if raw else studyhub_home() / "audit.log"


def operator() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


_ACTOR: ContextVar[str | None] = ContextVar("studyhub_audit_actor", default=None)


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Every audit line written in this block (this thread or task) names ``actor``."""
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def write_audit(action: str, profile: str, *, actor: str | None = None,
                **details: Any) -> dict[str, Any]:
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "operator": operator(),
        "profile": profile,
        "action": action,
        **details,
    }
    actor = actor or _ACTOR.get()
    if actor:
        record["actor"] = actor
    path = audit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, default=str, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)
    return record


def describe_error(exc: BaseException, *, with_text: bool = True) -> str:
    """What an audit line says of a failure: our own errors' first line (they are written to
    carry names and counts, never secrets), otherwise only the exception's type (a driver's
    message may quote values)."""
    if with_text and isinstance(exc, StudyhubError):
        return ((str(exc).splitlines() or [""])[0])[:300]
    return type(exc).__name__


@contextmanager
def audited(action: str, profile: str, *, failed_action: str | None = None,
            error_text: bool = True, **details: Any) -> Iterator[dict[str, Any]]:
    """One audit line for the work done in the ``with`` block. Yields the line's details (a
    dict the block may add to: counts, names, the result's id). On success writes ``action``
    with ``outcome="ok"``; on an exception writes ``failed_action`` (default ``action``) with
    ``outcome="failed"`` (``"interrupted"`` for Ctrl-C) and ``error`` (``describe_error``;
    type only when ``error_text`` is false, e.g. where a message could name a person), then
    re-raises."""
    record: dict[str, Any] = dict(details)
    try:
        yield record
    except BaseException as exc:
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_audit(failed_action or action, profile, **{
            **record, "outcome": outcome, "error": describe_error(exc, with_text=error_text)})
        raise
    write_audit(action, profile, **{**record, "outcome": "ok"})


def read_audit(limit: int | None = None) -> list[dict[str, Any]]:
    path = audit_path()
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if limit:
        lines = lines[-limit:]
    return [json.loads(line) for line in lines if line.strip()]
