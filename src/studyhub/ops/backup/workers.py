"""The workers of a backup or restore: threads that share a queue (an error in one is raised in
the caller's thread), PostgreSQL's client programs run as children (their failure told in one
line), and the progress events both report to the renderer."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from typing import Callable

import psycopg

from studyhub.local.proc import pg_program
from studyhub.ops.backup.setformat import BackupError

DEFAULT_JOBS = 2

ProgressFn = Callable[["ProgressEvent"], None]


@dataclass
class ProgressEvent:
    phase: str  # dump | compress | checksum | verify | schema | data | post-data | ...
    done: int = 0
    total: int = 0
    bytes: int = 0
    message: str = ""


def no_progress(_: ProgressEvent) -> None:
    pass


def run_threads(target: Callable[[], None], n: int) -> None:
    """Run ``target`` on ``n`` (at least one) threads and wait for all of them; workers put
    their exceptions in a shared list for :func:`raise_first`."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(max(1, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def raise_first(errors: list[BaseException], what: str) -> None:
    """Re-raise the first worker error in the caller's thread (a server error as one line)."""
    if errors:
        exc = errors[0]
        if isinstance(exc, psycopg.Error):
            raise BackupError(f"{what} failed: {str(exc).strip().splitlines()[0]}") from None
        raise exc


def tool_version_line(program: str) -> str:
    out = subprocess.run([str(pg_program(program)), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def stderr_tail(lines: list[str], n: int = 1) -> str:
    """What a failed client program said, in one line: its last error lines."""
    useful = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    return " / ".join(ln.strip() for ln in useful[-n:]) or "no message"
