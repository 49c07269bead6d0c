"""Keyset pagination: an opaque cursor holding the last row's (timestamp, id)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa

from studyhub.api.errors import ApiError


def encode_cursor(ts: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([ts.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts_text, id_text = json.loads(raw)
        ts = datetime.fromisoformat(ts_text)
        if ts.tzinfo is None:
            raise ValueError
        # Ours are UTC; another offset may leave the range of dates (year 0 or 10000 in UTC).
        return ts.astimezone(timezone.utc), uuid.UUID(id_text)
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(422, "invalid input: cursor: not a cursor this API returned") from None


def newest_first(stmt: sa.Select, ts_col: sa.ColumnElement, id_col: sa.ColumnElement,
                 cursor: str | None, limit: int) -> sa.Select:
    """``stmt`` ordered newest first, after ``cursor``, one row more than ``limit`` (to know
    whether there is a next page)."""
    if cursor:
        ts, row_id = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(ts_col, id_col) < sa.tuple_(sa.literal(ts, sa.DateTime(timezone=True)),
                                                   sa.literal(row_id, sa.Uuid())))
    return stmt.order_by(ts_col.desc(), id_col.desc()).limit(limit + 1)


def page(rows: list, limit: int, ts_attr: str) -> tuple[list, str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        return rows, encode_cursor(getattr(last, ts_attr), last.id)
    return rows, None
