"""The one write-temp-then-rename mechanism (files, text, JSON, directories) and the shared
hashing writer: complete or absent, never half-written, never clobbering."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat

import pytest

from studyhub.atomic_file import (
    atomic_directory,
    is_temporary,
    write_json_atomically,
    write_text_atomically,
)
from studyhub.errors import StudyhubError
from studyhub.hashing import HashingWriter, sha256_file


def test_text_and_json_are_written_whole_0600_and_never_clobber(tmp_path):
    path = write_text_atomically(tmp_path / "a.txt", "héllo\n")
    assert path.read_text() == "héllo\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(StudyhubError, match="already exists"):
        write_text_atomically(path, "other")
    assert path.read_text() == "héllo\n"
    write_json_atomically(tmp_path / "b.json", {"n": 1, "p": tmp_path}, overwrite=True)
    assert json.loads((tmp_path / "b.json").read_text()) == {"n": 1, "p": str(tmp_path)}
    assert (tmp_path / "b.json").read_text().endswith("}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]  # no temp left


def test_before_rename_sees_the_complete_temporary_file_and_a_failure_leaves_nothing(tmp_path):
    seen = []

    def check(tmp):
        seen.append((tmp.read_text(), is_temporary(tmp.name, "c.txt")))

    write_text_atomically(tmp_path / "c.txt", "data", mode=0o640, before_rename=check)
    assert seen == [("data", True)]
    assert stat.S_IMODE((tmp_path / "c.txt").stat().st_mode) == 0o640

    def fail(_tmp):
        raise RuntimeError("chown failed")

    with pytest.raises(RuntimeError):
        write_text_atomically(tmp_path / "d.txt", "data", before_rename=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]
    assert not is_temporary("c.txt", "c.txt") and not is_temporary(".c.txt.x.tmp", "d.txt")


def test_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    final = tmp_path / "set"
    with atomic_directory(final, temp_name=".partial-set-1") as tmp:
        assert tmp.name == ".partial-set-1" and stat.S_IMODE(tmp.stat().st_mode) == 0o700
        (tmp / "f").write_text("x")
        assert not final.exists()
    assert (final / "f").read_text() == "x" and not tmp.exists()

    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "other") as tmp:
            (tmp / "f").write_text("half")
            raise ValueError("the block failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]

    with pytest.raises(StudyhubError, match="already exists"):  # appeared meanwhile
        with atomic_directory(final) as tmp:
            (tmp / "g").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["f"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_atomic_directory_can_leave_creating_it_to_a_child_program(tmp_path):
    with atomic_directory(tmp_path / "base", temp_name="base.part", create=False) as tmp:
        assert not tmp.exists()
        os.mkdir(tmp)  # as pg_basebackup -D does
        (tmp / "backup_manifest").write_text("{}")
    assert (tmp_path / "base" / "backup_manifest").exists()
    assert not (tmp_path / "base.part").exists()


def test_hashing_writer_passes_everything_on_and_hashes_it_in_both_modes(tmp_path):
    pieces = [b"row 1\n", "row 2 ü\n", memoryview(b"x" * 5000), b""]
    expected = b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in pieces)
    for block_size in (0, 1024):
        raw = io.BytesIO()
        w = HashingWriter(raw, block_size=block_size)
        for p in pieces:
            w.write(p)
        w.flush()
        assert raw.getvalue() == expected and w.bytes == len(expected)
        assert w.hexdigest() == hashlib.sha256(expected).hexdigest()
    # as a compressor's output: the hash is the compressed file's
    path = tmp_path / "t.gz"
    with open(path, "wb") as fh:
        w = HashingWriter(fh)
        with gzip.GzipFile(fileobj=w, mode="wb", mtime=0) as gz:
            gz.write(expected)
        w.flush()
    assert w.hexdigest() == sha256_file(path) and w.bytes == path.stat().st_size
