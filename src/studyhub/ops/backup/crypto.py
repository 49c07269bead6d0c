"""Client-side encryption of backup sets in the age format (pyrage, the Rust ``age`` crate):
every object of an encrypted set is one age file, readable with the stock ``age`` CLI
(``age -d -i identity.txt``). Sets are encrypted to the profile's recipients (X25519 public
keys, ``age1…``; several allowed: the operator's and an offline recovery key); only a restore
needs an identity (the private key, a 0600 file). Manifests record recipients' fingerprints,
never keys.

age's streaming format authenticates each 64 KiB chunk (ChaCha20-Poly1305) and the end of the
stream: a flipped bit, a cut or an appended byte fails decryption (an *AEAD failure*), which is
reported as one line naming the object. pyrage works on whole streams (``encrypt_io(reader,
writer)``), so a push-style writer (:class:`EncryptingWriter`) and a pull-style reader
(:class:`DecryptingReader`) each run it on a thread of their own, joined by a pipe: memory
stays at a pipe's buffer and age's chunk.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import pyrage
from pyrage import x25519

from studyhub.ops.backup.setformat import BackupError

AGE_SUFFIX = ".age"
METHOD = "age-x25519"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
PIPE_BYTES = 1 << 20  # pipe buffer between a stream and its age thread


# ---------------------------------------------------------------------------- keys
def fingerprint(recipient: str) -> str:
    """A recipient's short public fingerprint, ``sha256:`` and 16 hex digits of the sha256 of
    its ``age1…`` text (what manifests and messages name instead of the key)."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def parse_recipients(texts: tuple[str, ...] | list[str]) -> list[x25519.Recipient]:
    """The profile's recipients; an invalid one is named by its position (and its fingerprint)."""
    out = []
    for i, text in enumerate(texts, 1):
        try:
            out.append(x25519.Recipient.from_str(text.strip()))
        except Exception:  # noqa: BLE001 - pyrage.RecipientError and friends
            raise BackupError(f"recipient {i} ({fingerprint(text)}) is not an age X25519 "
                              "public key (age1…)") from None
    if len(set(map(str, out))) != len(out):
        raise BackupError("the same recipient is listed twice")
    return out


def check_private_file(path: Path, what: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BackupError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BackupError(f"cannot read {what} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BackupError(f"{what} {path} is readable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")


def load_identity(path: Path) -> x25519.Identity:
    """An age identity file (as ``age-keygen`` and ``backup keygen`` write it), mode 0600. Its
    content is never quoted in an error."""
    check_private_file(path, "identity file")
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError):
        raise BackupError(f"cannot read identity file {path}") from None
    keys = [ln for ln in lines if ln.startswith(IDENTITY_PREFIX)]
    if len(keys) != 1:
        raise BackupError(f"identity file {path} must hold exactly one {IDENTITY_PREFIX}… line "
                          f"(it holds {len(keys)})")
    try:
        return x25519.Identity.from_str(keys[0])
    except Exception:  # noqa: BLE001 - pyrage.IdentityError
        raise BackupError(f"identity file {path} does not hold a valid age identity") from None


def identity_fingerprint(identity: x25519.Identity) -> str:
    return fingerprint(str(identity.to_public()))


def write_identity(path: Path) -> str:
    """A new identity file (0600, never overwriting one), in age-keygen's format; returns its
    recipient (the public key to put in the profile)."""
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists; refusing to overwrite an identity "
                          "(its sets could not be restored without it)") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return recipient


# ------------------------------------------------------------------------ errors
def decrypt_failure(exc: BaseException, what: str, identity_fp: str) -> BaseException:
    """One line for a failed decryption of ``what``: not for this identity, not an age file,
    or an authentication (AEAD) failure: tampered, truncated or corrupted."""
    if isinstance(exc, BackupError):
        return exc
    if isinstance(exc, pyrage.DecryptError):
        if "no matching keys" in str(exc).lower():
            return BackupError(
                f"{what} is not encrypted for identity {identity_fp}, although the manifest "
                "lists it: the manifest does not describe this object (replaced?)")
        return BackupError(f"{what} is not a valid age file (header unreadable: tampered or "
                           "not ours)")
    if isinstance(exc, OSError) and "decryption error" in str(exc):
        return BackupError(f"{what} failed age authentication (AEAD): the object was tampered "
                           "with, truncated or corrupted")
    return exc


def encrypt_bytes(data: bytes, recipients: list[x25519.Recipient]) -> bytes:
    return pyrage.encrypt(data, recipients)


def decrypt_bytes(data: bytes, identity: x25519.Identity, what: str) -> bytes:
    try:
        return pyrage.decrypt(data, [identity])
    except BaseException as exc:  # noqa: BLE001 - translated
        raise decrypt_failure(exc, what, identity_fingerprint(identity)) from None


# ------------------------------------------------------------------------ streams
def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass  # the default (64 KiB) works, with more switches
    return r, w


class EncryptingWriter:
    """A write-only stream that age-encrypts everything written to it into ``sink`` (which
    sees the ciphertext: put a HashingWriter there to hash what is stored). ``close()``
    finishes the age stream; ``abort()`` gives up."""

    def __init__(self, sink: IO[bytes] | Any, recipients: list[x25519.Recipient]) -> None:
        r, self._w = _pipe()
        self._reader = os.fdopen(r, "rb", buffering=PIPE_BYTES)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sink, recipients),
                                        daemon=True, name="age-encrypt")
        self._thread.start()

    def _run(self, sink: Any, recipients: list[x25519.Recipient]) -> None:
        try:
            pyrage.encrypt_io(self._reader, sink, recipients)
        except BaseException as exc:  # noqa: BLE001 - raised in the writer's thread
            self.error = exc
        finally:
            self._reader.close()  # a writer still writing gets EPIPE

    def _failed(self) -> BaseException:
        self._thread.join()
        return self.error or BackupError("encryption stopped early")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        while view:
            try:
                n = os.write(self._w, view)
            except (BrokenPipeError, OSError):
                raise self._failed() from None
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        self._thread.join(timeout=30)


class _SourceErrors:
    """``source`` as pyrage reads it, keeping the first error its reads raised: pyrage turns
    an exception from a read into its own DecryptError ("header unreadable" …), which would
    tell a dropped download or a truncated object as tampering."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.source.read(n)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise


class _SinkErrors:
    """``sink`` as pyrage writes to it, keeping the first error its writes raised (pyrage
    wraps it in an EncryptError, whose text would hide a failed upload's one line)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            n = self.sink.write(data)
            return len(data) if n is None else n  # pyrage needs the count
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise

    def flush(self) -> None:
        pass


def encrypt_stream(source: Any, sink: Any, recipients: list[x25519.Recipient]) -> None:
    """age-encrypt everything ``source.read`` gives (to its end) into ``sink``, in the calling
    thread: pyrage pulls from the source, so there is no pipe and no thread between the two
    (half the CPU of :class:`EncryptingWriter`'s path, measured in docs/backup.md). An error of
    the source or of the sink is raised as itself."""
    src, dst = _SourceErrors(source), _SinkErrors(sink)
    try:
        pyrage.encrypt_io(src, dst, recipients)
    except pyrage.EncryptError:
        if src.error is not None:
            raise src.error from None
        if dst.error is not None:
            raise dst.error from None
        raise


class DecryptingReader(io.RawIOBase):
    """A read-only stream of the plaintext of age ciphertext read from ``source``. Reads
    ``source`` to its end (so a HashingReader there sees every byte); any failure —
    decryption, authentication, the source's own check or read — is raised by the read that
    would otherwise have returned the end of the stream, never as a silent short read. A
    failure of the source itself (a download that kept dropping, a truncated object) is raised
    as itself, not as the decryption error it caused."""

    def __init__(self, source: Any, identity: x25519.Identity, what: str) -> None:
        super().__init__()
        r, w = _pipe()
        self._r = os.fdopen(r, "rb")
        self._wfile = os.fdopen(w, "wb")
        self._what = what
        self._source = source
        self._fp = identity_fingerprint(identity)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source, identity),
                                        daemon=True, name="age-decrypt")
        self._thread.start()

    def _run(self, source: Any, identity: x25519.Identity) -> None:
        recorded = _SourceErrors(source)
        try:
            pyrage.decrypt_io(recorded, self._wfile, [identity])
            while recorded.read(1 << 20):  # the rest (none for a good object): hashed, checked
                pass
        except BaseException as exc:  # noqa: BLE001 - raised by the reader's last read
            self.error = recorded.error or exc
        finally:
            try:
                self._wfile.close()
            except OSError:
                pass  # the reader went away (its consumer failed)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self._r.read(size if size and size > 0 else 1 << 20)
        if not data:
            self._thread.join()
            if self.error is not None:
                raise decrypt_failure(self.error, self._what, self._fp) from None
        return data

    def close(self) -> None:
        if not self.closed:
            self._r.close()
            self._thread.join(timeout=30)
            close = getattr(self._source, "close", None)
            if close:
                close()
        super().close()
