"""sha256 of what is written, while it is written, and of a file on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20


class HashingWriter:
    """A write-only file object that passes everything on to ``raw`` and keeps the sha256
    (``sha``) and the count (``bytes``) of what it passed. Usable as the output of a
    compressor (zstandard's ``stream_writer``, ``gzip.GzipFile(fileobj=…)``).

    With ``block_size`` > 0, small writes (COPY yields a row at a time) are gathered into
    blocks of about that size before they go on: call ``flush()`` before closing ``raw``.
    ``str`` is written as UTF-8."""

    def __init__(self, raw: IO[bytes] | Any, *, block_size: int = 0) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.block_size = block_size
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview | str) -> int:
        if isinstance(data, str):
            data = data.encode()
        if self.block_size > 0:
            self._buf += data
            if len(self._buf) >= self.block_size:
                self._pass_on(bytes(self._buf))
                self._buf = bytearray()
            return len(data)
        return self._pass_on(data)

    def _pass_on(self, data: bytes | bytearray | memoryview) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        """Pass on what is gathered, then flush ``raw``."""
        if self._buf:
            self._pass_on(bytes(self._buf))
            self._buf = bytearray()
        self.raw.flush()

    def hexdigest(self) -> str:
        """The sha256 of what was passed on so far (``flush()`` first with ``block_size``)."""
        return self.sha.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
