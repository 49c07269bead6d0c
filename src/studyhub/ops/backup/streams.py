"""The byte streams of a backup set: table data compressed with zstd (or gzip, or nothing),
encrypted with age when the set is (``crypto.py``) and hashed as it is written — to a file or an
upload, whichever the sink is — and read back (checked, decrypted, decompressed) in chunks of
about 1 MB; a pg_dump table file compressed while pg_dump writes it, and served to pg_restore
through a named pipe."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Protocol

import zstandard
from pyrage import x25519

from studyhub.hashing import HashingWriter
from studyhub.ops.backup.crypto import EncryptingWriter, encrypt_stream
from studyhub.ops.backup.setformat import BackupError, Compression

DEFAULT_COMPRESSION = Compression("zstd", 1)  # see docs/backup.md for the measurements
DATA_SUFFIX = {"zstd": ".bin.zst", "gzip": ".bin.gz", "none": ".bin"}


def parse_compression(text: str) -> Compression:
    """``zstd``, ``zstd:LEVEL`` (1-19), ``gzip``, ``gzip:LEVEL`` (1-9) or ``none``."""
    method, _, level_text = text.strip().lower().partition(":")
    limits = {"zstd": (1, 19, 1), "gzip": (1, 9, 1), "none": (0, 0, None)}
    if method not in limits:
        raise BackupError(f"unknown compression {text!r}; use zstd[:1-19], gzip[:1-9] or none")
    lo, hi, default = limits[method]
    if method == "none":
        if level_text:
            raise BackupError("compression 'none' takes no level")
        return Compression("none", None)
    try:
        level = int(level_text) if level_text else default
    except ValueError:
        raise BackupError(f"compression level {level_text!r} is not a number") from None
    if not lo <= level <= hi:
        raise BackupError(f"{method} level must be between {lo} and {hi}")
    return Compression(method, level)


class StreamCompressor(threading.Thread):
    """Compress one table file with zstd *while pg_dump writes it*: read to the current end,
    wait, read on; done once pg_dump has reported the file finished and the end is reached.
    Compression overlaps the dump instead of following it."""

    def __init__(self, path: Path, level: int):
        super().__init__(daemon=True)
        self.path = path
        self.level = level
        self.finished = threading.Event()
        self.abort = threading.Event()
        self.out: HashingWriter | None = None
        self.error: BaseException | None = None

    @property
    def bytes_out(self) -> int:
        return self.out.bytes if self.out else 0

    def run(self) -> None:
        try:
            dst = self.path.with_name(self.path.name + ".zst")
            with open(self.path, "rb") as src, open(dst, "wb") as ofh:
                self.out = HashingWriter(ofh)
                # single-threaded: one stream per table pg_dump writes in parallel already;
                # libzstd worker threads on top only took CPU from the server (28 s vs 18 s)
                cctx = zstandard.ZstdCompressor(level=self.level)
                comp = cctx.stream_writer(self.out, closefd=False)
                while True:
                    done = self.finished.is_set()  # before the read: then EOF is the end
                    chunk = src.read(1 << 20)
                    if chunk:
                        comp.write(chunk)
                        continue
                    if done:
                        break
                    if self.abort.wait(0.02):
                        return
                comp.flush(zstandard.FLUSH_FRAME)
                ofh.flush()
            self.path.unlink()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc


class Sink(Protocol):
    """Where a stored object's bytes go: a file or an upload (``store.py``); ``close()``
    makes it complete, ``abort()`` leaves nothing that counts."""

    def write(self, data: bytes) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class CompressedFile:
    """One stored object written through zstd, gzip or nothing, then age encryption when
    ``recipients`` are given, hashed (sha256, size: ``out``) as it reaches ``sink``.

    Two ways to fill it: :meth:`pump` takes a whole source (a table's COPY stream) and pulls
    it through zstd (and age) in the calling thread — age reads the compressor, no pipe and no
    thread; :meth:`write` pushes pieces (through an age thread, :class:`EncryptingWriter`).
    gzip is pushed either way."""

    def __init__(self, sink: Sink | IO[bytes] | Any, compression: Compression,
                 recipients: list[x25519.Recipient] | None = None):
        self.sink = sink
        self.out = HashingWriter(sink)
        self.recipients = recipients or None
        self.compression = compression
        self.method = compression.method
        self.raw_bytes = 0
        self.enc: EncryptingWriter | None = None
        self.w: Any = None
        self.pumped = False

    def _push_chain(self) -> None:
        self.enc = EncryptingWriter(self.out, self.recipients) if self.recipients else None
        below: Any = self.enc or self.out
        if self.method == "zstd":
            self.w = zstandard.ZstdCompressor(level=self.compression.level or 1).stream_writer(
                below, closefd=False)
        elif self.method == "gzip":
            self.w = gzip.GzipFile(fileobj=below, mode="wb",  # type: ignore[arg-type]
                                   compresslevel=self.compression.level or 1, mtime=0)
        else:
            self.w = below

    def write(self, data: bytes) -> None:
        if self.w is None:
            self._push_chain()
        self.raw_bytes += len(data)
        self.w.write(data)

    def pump(self, read: Callable[[int], bytes],
             on_chunk: Callable[[int], None] | None = None) -> None:
        """Everything ``read(n)`` returns, until it returns nothing: this object's whole
        content (``close()`` still finishes it). ``on_chunk`` hears the raw bytes taken so
        far after each read."""
        def counted(n: int = -1) -> bytes:
            data = read(n if n and n > 0 else 1 << 20)
            self.raw_bytes += len(data)
            if on_chunk is not None and data:
                on_chunk(self.raw_bytes)
            return data

        if self.w is None and self.method in ("zstd", "none"):
            source: Any = _Reader(counted)
            level = self.compression.level or 1
            if self.recipients:
                if self.method == "zstd":
                    source = zstandard.ZstdCompressor(level=level).stream_reader(
                        source, read_size=1 << 20, closefd=False)
                encrypt_stream(source, self.out, self.recipients)
            elif self.method == "zstd":  # one C loop: read, compress, write
                zstandard.ZstdCompressor(level=level).copy_stream(
                    source, self.out, read_size=1 << 20, write_size=1 << 20)
            else:
                while chunk := source.read(1 << 20):
                    self.out.write(chunk)
            self.pumped = True
            return
        while chunk := read(1 << 20):
            self.write(chunk)
            if on_chunk is not None:
                on_chunk(self.raw_bytes)

    def close(self) -> None:
        if not self.pumped:
            if self.w is None:
                self._push_chain()  # nothing written: still a complete (empty) stream
            if self.method == "zstd":
                self.w.flush(zstandard.FLUSH_FRAME)
            elif self.method == "gzip":
                self.w.close()
            if self.enc:
                self.enc.close()
        self.sink.close()

    def discard(self) -> None:
        if self.enc:
            self.enc.abort()
        abort = getattr(self.sink, "abort", None)
        (abort or self.sink.close)()


class _Reader:
    """A ``read`` function as the file-like object zstd and pyrage read from."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


class HashingReader:
    """Reads ``source`` and checks, at its end, that it was exactly ``size`` bytes with this
    sha256 (a remote object, checked while it streams): a mismatch is raised by the read
    that reaches the end, before anything downstream can take the data as complete."""

    def __init__(self, source: Any, what: str, size: int, sha256: str,
                 on_checked: Callable[[str], None] | None = None) -> None:
        self.source, self.what, self.size, self.expected = source, what, size, sha256
        self.on_checked = on_checked
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.checked = False

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n if n and n > 0 else 1 << 20)
        if data:
            self.sha.update(data)
            self.bytes += len(data)
            if self.bytes > self.size:
                raise BackupError(f"{self.what} is longer than the manifest says ({self.size} "
                                  "bytes): not the object the set was made with")
        elif not self.checked:
            if self.bytes != self.size:
                raise BackupError(f"{self.what} ends after {self.bytes} of {self.size} bytes "
                                  "(truncated)")
            if self.sha.hexdigest() != self.expected:
                raise BackupError(f"{self.what}: sha256 differs from the manifest (tampered "
                                  "or corrupted)")
            self.checked = True
            if self.on_checked:
                self.on_checked(self.what)
        return data

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close:
            close()


def data_chunks(fh: Any, method: str, name: str) -> Iterator[bytes]:
    """The decompressed bytes of one data stream ``fh`` (a file, or a checked and decrypted
    remote object), in chunks of about 1 MB in. A zstd frame that does not end (a truncated
    file) is an error, not a silent short read; so is any error of the reader itself."""
    if method == "zstd":
        dobj = zstandard.ZstdDecompressor().decompressobj()
        while chunk := fh.read(1 << 20):
            out = dobj.decompress(chunk)
            if out:
                yield out
        if not dobj.eof:
            raise BackupError(f"{name} ends in the middle of its zstd frame (truncated)")
    elif method == "gzip":
        with gzip.GzipFile(fileobj=fh) as gz:
            while chunk := gz.read(1 << 20):
                yield chunk
    else:
        while chunk := fh.read(1 << 20):
            yield chunk


class FifoFeeder:
    """Serve a zstd set's table files to pg_restore through named pipes: each ``NNNN.dat`` in a
    scratch directory is a FIFO that a thread fills, decompressing ``NNNN.dat.zst``, when
    pg_restore opens it. Nothing uncompressed is written to disk."""

    def __init__(self, dump_dir: Path):
        self.src = dump_dir
        self.dir = Path(tempfile.mkdtemp(prefix="studyhub-restore-"))
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        for p in dump_dir.iterdir():
            if p.name.endswith(".dat.zst"):
                fifo = self.dir / p.name[: -len(".zst")]
                os.mkfifo(fifo, 0o600)
                t = threading.Thread(target=self._feed, args=(p, fifo), daemon=True)
                self.threads.append(t)
            else:
                (self.dir / p.name).symlink_to(p)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _feed(self, src: Path, fifo: Path) -> None:
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    self.errors.append(f"{fifo.name}: {exc}")
                    return
                if self.stop.wait(0.02):
                    return
        os.set_blocking(fd, True)
        try:
            with open(src, "rb") as ifh, os.fdopen(fd, "wb") as ofh:
                zstandard.ZstdDecompressor().copy_stream(ifh, ofh, write_size=1 << 20)
        except BrokenPipeError:
            pass  # pg_restore stopped reading (it failed); its own error is reported

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
