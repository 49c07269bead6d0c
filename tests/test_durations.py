"""Timeouts from the command line: one parser, one clear line for bad values, nothing changed."""

from __future__ import annotations

import uuid

import pytest

from studyhub.durations import parse_timeout
from studyhub.errors import StudyhubError


@pytest.mark.parametrize("text,expected", [("5s", "5s"), (" 500ms", "500ms"), ("2 min", "2min")])
def test_good_timeouts(text, expected):
    assert parse_timeout(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("0s", "no limit"), ("0", "unit"), ("2", "unit"), ("5 seconds", "unit"), ("-1s", "unit"),
    ("99999999999999999999ms", "unit"), ("2h", "at most"), ("1s; DROP TABLE x", "unit")])
def test_bad_timeouts_are_refused_with_the_reason(text, reason):
    with pytest.raises(StudyhubError, match=reason):
        parse_timeout(text, max_s=60)


@pytest.mark.parametrize("args", [
    ("migrate", "up", "--lock-timeout", "0"),
    ("migrate", "up", "--lock-timeout", "99999999999999"),
    ("privacy", "erase", "--student", str(uuid.uuid4()), "--lock-timeout", "0", "--dry-run"),
    ("privacy", "erase", "--student", str(uuid.uuid4()), "--lock-timeout", "99999999999999999999ms",
     "--dry-run"),
    ("diag", "explain", "SELECT 1", "--timeout", "0s"),
])
def test_bad_timeouts_on_the_command_line_are_one_line(migrated, cli, args, monkeypatch):
    monkeypatch.setenv("STUDYHUB_PSEUDONYM_KEY", "k" * 64)
    res = cli(*args)
    assert res.exit_code == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "timeout" in res.stderr
