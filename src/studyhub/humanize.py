"""Numbers and texts as people read them — shared by every renderer (CLI, dashboard), so a size
or a duration reads the same everywhere."""

from __future__ import annotations

import pglast

_COMMENTS = ("SQL_COMMENT", "C_COMMENT")


def human_bytes(n: int | float | None) -> str:
    """1536 → "1.5 kB" (powers of 1024, as pg_size_pretty); None → "-"."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def human_s(s: float | None) -> str:
    """A duration in seconds: "250ms", "4.2s", "12min", "3.5h"; None → "-"."""
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def without_sql_comments(text: str) -> str:
    """``text`` with its SQL comments left out, as PostgreSQL's own lexer (pglast) finds them
    (a ``--`` inside a string is not a comment). Text the lexer cannot read (a statement
    pg_stat_statements cut short, say) is returned as it is."""
    try:
        tokens = pglast.parser.scan(text)
    except pglast.parser.ParseError:
        return text
    out, pos = [], 0
    for tok in tokens:
        if tok.name in _COMMENTS:
            out.append(text[pos:tok.start])
            out.append(" ")
            pos = tok.end + 1
    out.append(text[pos:])
    return "".join(out)


def short(text: str | None, width: int = 70) -> str:
    """One line, SQL comments left out, cut to ``width`` characters."""
    if not text:
        return ""
    one = " ".join(without_sql_comments(text).split())
    return one if len(one) <= width else one[: width - 1] + "…"
