"""Timeouts given on the command line ("5s", "500ms", "2min"), checked once for every command.

A timeout of 0 means "no timeout" to PostgreSQL, which for lock_timeout is exactly the danger
the setting exists to prevent, so 0 is refused; so is a bare number (PostgreSQL would read
milliseconds, people mean seconds) and anything over the caller's ceiling (a value beyond the
server's integer range would otherwise fail later with a traceback).
"""

from __future__ import annotations

import re

from studyhub.errors import StudyhubError

_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
_FORM = re.compile(r"(\d{1,9})\s*(ms|s|min|h)")


def parse_timeout(value: str, *, what: str = "timeout", max_s: float = 3600) -> str:
    """``value`` as a PostgreSQL interval literal ('5s'), or StudyhubError with one line."""
    text = value.strip()
    m = _FORM.fullmatch(text)
    if not m:
        raise StudyhubError(f"invalid {what} {value!r}: give a number with a unit "
                            "(500ms, 5s, 2min)")
    ms = int(m.group(1)) * _UNITS_MS[m.group(2)]
    if ms == 0:
        raise StudyhubError(f"invalid {what} {value!r}: 0 would mean no limit at all")
    if ms > max_s * 1000:
        raise StudyhubError(f"invalid {what} {value!r}: at most {max_s:g} s")
    return f"{m.group(1)}{m.group(2)}"
