"""``audited``: one audit line for a change however it ends — the mechanism every mutating ops
function uses, so a failed restore is on record like a successful one."""

from __future__ import annotations

import pytest

from studyhub.audit import audited, read_audit
from studyhub.errors import StudyhubError


@pytest.fixture(autouse=True)
def audit_log(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))


def test_success_is_written_once_with_what_the_work_added():
    with audited("backup.restore", "local", set="s1") as line:
        line["tables"] = 9
    [record] = read_audit()
    assert {k: record[k] for k in ("action", "profile", "set", "tables", "outcome")} == {
        "action": "backup.restore", "profile": "local", "set": "s1", "tables": 9,
        "outcome": "ok"}
    assert record["operator"] and record["time"]


def test_a_failure_is_written_with_our_message_or_only_the_type_and_re_raised():
    with pytest.raises(StudyhubError):
        with audited("backup.restore", "local", set="s1"):
            raise StudyhubError("checksum mismatch in notes.bin\nsecond line")
    with pytest.raises(ValueError):
        with audited("cluster.fork", "staging", failed_action="cluster.fork.failed"):
            raise ValueError("a driver message that may quote a value: ada@example.org")
    with pytest.raises(StudyhubError):
        with audited("privacy.erase", "local", error_text=False):
            raise StudyhubError("no student with email ada@example.org")
    first, second, third = read_audit()
    assert (first["outcome"], first["error"]) == ("failed", "checksum mismatch in notes.bin")
    assert (second["action"], second["error"]) == ("cluster.fork.failed", "ValueError")
    assert third["error"] == "StudyhubError" and "ada@" not in str(read_audit())


def test_ctrl_c_is_written_as_interrupted():
    with pytest.raises(KeyboardInterrupt):
        with audited("backup.create", "local"):
            raise KeyboardInterrupt
    assert read_audit()[-1]["outcome"] == "interrupted"
