"""SQL lives in ``ops/sql/*.sql``, one file per question, named by what it answers; this
loads them by name (cached)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"


@cache
def load(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()
