"""Writing one backup set into a target, and reading one back — the same layout in a local
directory and in object storage (``setformat.py``), encrypted or not.

:class:`SetWriter` (``LocalSetWriter``, ``RemoteSetWriter``) is what ``create`` writes through:
a staging directory on this machine for pg_dump's schema archive (small), a sink per data
object (a file, or a multipart upload fed as the COPY stream arrives), small objects (the
erasure ledger), and ``finish(manifest)``: the manifest written last — a local set is then
checked, fsynced and renamed into place; a remote set's objects are checked against the
sizes the store gave for them (asked as each upload completed), then its signature and
manifest uploaded, the manifest last, so a set that did not finish never lists as complete.
Leaving the ``with`` block by an exception removes what was written (a local ``.partial-``
directory; the uploaded objects, and the uploader aborts the multipart uploads).

:class:`SetSource` (``LocalSetSource``, ``RemoteSetSource``) is what ``restore`` and
``verify`` read: the manifest (signature checked where the profile has a ``verify_key``), the
identity check (the set's recipients against the identity's fingerprint), every object as
stored (remote: checked for size and sha256 *while* it streams), as plaintext (decrypted), the
schema archive in a local directory, the erasure ledger the set carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pyrage import x25519

from studyhub.atomic_file import atomic_directory, write_atomically, write_json_atomically
from studyhub.ops.backup.crypto import (
    AGE_SUFFIX,
    DecryptingReader,
    encrypt_bytes,
    identity_fingerprint,
    load_identity,
)
from studyhub.ops.backup.s3 import S3Store, StoredObject
from studyhub.ops.backup.upload import Uploader
from studyhub.ops.backup.setformat import (
    DUMP_DIR,
    MANIFEST,
    NAME_RE,
    PARTIAL_PREFIX,
    SIGNATURE,
    VERIFIED,
    BackupError,
    Compression,
    FileEntry,
    Manifest,
    Problem,
    check_files,
    hash_files,
    manifest_bytes,
    parse_manifest,
)
from studyhub.ops.backup.signing import check_signature, sign
from studyhub.ops.backup.streams import CompressedFile, HashingReader
from studyhub.ops.privacy import ledger
from studyhub.profiles import BackupConfig

NO_COMPRESSION = Compression("none")


class FileSink:
    """A local file as a sink (``abort`` leaves it to the partial directory's removal)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "wb")

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    def abort(self) -> None:
        self.fh.close()


# ------------------------------------------------------------------------------ writing
class SetWriter:
    """One set being written (a context manager; see the module docstring)."""

    name: str
    staging: Path  # pg_dump writes its archive here (``staging / "dump"``)
    location: str

    def __init__(self, name: str, recipients: list[x25519.Recipient] | None,
                 signing_key: Any = None) -> None:
        self.name = name
        self.recipients = recipients or None
        self.signing_key = signing_key
        self.finished = False

    def stored(self, rel: str) -> str:
        """The name an object is stored under (``.age`` added when encrypted)."""
        return rel + AGE_SUFFIX if self.recipients else rel

    def sink(self, stored: str) -> Any:
        raise NotImplementedError

    def open_data(self, stored: str, compression: Compression) -> CompressedFile:
        """A data object being written: compressed, encrypted (if), hashed, stored."""
        return CompressedFile(self.sink(stored), compression, self.recipients)

    def store_staged(self, paths: list[Path]) -> list[FileEntry]:
        """Files pg_dump wrote under ``staging``: stored (encrypted if) as objects of the set."""
        out = []
        for p in sorted(paths):
            stored = self.stored(str(p.relative_to(self.staging)))
            f = self.open_data(stored, NO_COMPRESSION)
            try:
                with open(p, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                f.close()
            except BaseException:
                f.discard()
                raise
            out.append(FileEntry(stored, f.out.bytes, f.out.hexdigest()))
        return out

    def store_bytes(self, rel: str, data: bytes) -> FileEntry:
        stored = self.stored(rel)
        blob = encrypt_bytes(data, self.recipients) if self.recipients else data
        self._put(stored, blob)
        return FileEntry(stored, len(blob), hashlib.sha256(blob).hexdigest())

    def _put(self, stored: str, blob: bytes) -> None:
        raise NotImplementedError

    def manifest_and_signature(self, manifest: Manifest) -> tuple[bytes, bytes | None]:
        data = manifest_bytes(manifest)
        return data, sign(data, self.signing_key) if self.signing_key is not None else None

    def finish(self, manifest: Manifest) -> str:
        raise NotImplementedError


class LocalSetWriter(SetWriter):
    """A set directory, written as ``.partial-NAME-PID`` and renamed once complete."""

    def __init__(self, root: Path, name: str, recipients: list[x25519.Recipient] | None,
                 signing_key: Any = None, jobs: int = 2) -> None:
        super().__init__(name, recipients, signing_key)
        self.root, self.jobs = root, jobs
        self.location = str(root / name)
        self._dir = atomic_directory(root / name,
                                     temp_name=f"{PARTIAL_PREFIX}{name}-{os.getpid()}")

    def __enter__(self) -> "LocalSetWriter":
        self.staging = self._dir.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._dir.__exit__(*exc)

    def sink(self, stored: str) -> FileSink:
        return FileSink(self.staging / stored)

    def store_staged(self, paths: list[Path]) -> list[FileEntry]:
        if not self.recipients:  # stored as pg_dump wrote them
            return hash_files(self.staging, paths, self.jobs)
        entries = super().store_staged(paths)
        for p in paths:
            p.unlink()
        return entries

    def _put(self, stored: str, blob: bytes) -> None:
        write_atomically(self.staging / stored, lambda f: f.write(blob))

    def finish(self, manifest: Manifest) -> str:
        data, signature = self.manifest_and_signature(manifest)
        if signature is not None:
            write_atomically(self.staging / SIGNATURE, lambda f: f.write(signature))
        write_atomically(self.staging / MANIFEST, lambda f: f.write(data))
        problems = check_files(self.staging, parse_manifest(self.name, data), self.jobs)
        if problems:
            raise BackupError(f"the new set does not match its manifest: {problems[0]}")
        self.finished = True
        return self.location


class RemoteSetWriter(SetWriter):
    """A set below ``PREFIX/NAME/`` of a bucket, streamed; the manifest uploaded last."""

    def __init__(self, store: S3Store, name: str, recipients: list[x25519.Recipient] | None,
                 signing_key: Any = None, streams: int = 2) -> None:
        super().__init__(name, recipients, signing_key)
        self.store = store
        self.location = f"{store.url}/{name}"
        self.uploader = Uploader(store, streams)

    def __enter__(self) -> "RemoteSetWriter":
        self.staging = Path(tempfile.mkdtemp(prefix="studyhub-backup-"))
        self.uploader.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.uploader.__exit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if exc_type is not None and not self.finished:
                try:  # abandon cleanly: no manifest was written; remove what was uploaded
                    self.store.delete([o.rel for o in self.store.objects(f"{self.name}/")])
                except BackupError:
                    pass  # `backup prune` finds the rest (an incomplete set, no manifest)

    def sink(self, stored: str) -> Any:
        return self.uploader.stream(f"{self.name}/{stored}")

    def _put(self, stored: str, blob: bytes) -> None:
        sink = self.sink(stored)  # one PUT (or parts, if large), completed and sized like any
        try:
            sink.write(blob)
            sink.close()
        except BaseException:
            sink.abort()
            raise

    def finish(self, manifest: Manifest) -> str:
        # every object's upload complete (they finish in the background), with its size as
        # the store answered for it; each must be what was written
        stored = self.uploader.wait()
        for f in manifest.files:
            got = stored.get(f"{self.name}/{f.path}")
            if got != f.bytes:
                held = "is not" if got is None else f"is {got} bytes"
                raise BackupError(f"uploaded {f.path} {held} in {self.store.url}, "
                                  f"{f.bytes} were written; the set was not completed")
        data, signature = self.manifest_and_signature(manifest)
        if signature is not None:
            self.store.put_bytes(f"{self.name}/{SIGNATURE}", signature)
        self.store.put_bytes(f"{self.name}/{MANIFEST}", data)  # last: now it is complete
        self.finished = True
        return self.location


# ------------------------------------------------------------------------------ reading
class SetSource:
    """One complete set, to verify or restore (see the module docstring)."""

    name: str
    location: str
    ledger_dir: Path | None = None  # where the backup directory's ledger file is (local)

    def __init__(self, name: str, raw_manifest: bytes, signature: bytes | None,
                 config: BackupConfig | None) -> None:
        self.name = name
        self.config = config
        if config is not None and config.verify_key:
            check_signature(name, raw_manifest, signature, config.verify_key)
        self.manifest = parse_manifest(name, raw_manifest)
        self.signature_checked = bool(config is not None and config.verify_key)
        self.identity: x25519.Identity | None = None
        self.hashed: set[str] = set()  # objects whose size and sha256 were checked

    @property
    def encrypted(self) -> bool:
        return self.manifest.encryption is not None

    def unlock(self, identity_file: Path | None) -> None:
        """Load the identity an encrypted set needs and check it is one of the set's
        recipients (before anything is restored); nothing to do for a set in clear."""
        if not self.encrypted or (self.identity is not None and identity_file is None):
            return
        made_for = ", ".join(self.manifest.recipients) or "no recipients"
        if identity_file is None:
            raise BackupError(
                f"backup set {self.name} is encrypted (for {made_for}); reading its data needs "
                "an identity: --identity FILE, [<profile>.backup] identity_file or "
                "$STUDYHUB_BACKUP_IDENTITY_FILE")
        identity = load_identity(identity_file)
        fp = identity_fingerprint(identity)
        if fp not in self.manifest.recipients:
            raise BackupError(
                f"wrong key: backup set {self.name} was encrypted for {made_for}; the identity "
                f"{identity_file} is {fp}, not one of them")
        self.identity = identity

    def size_problems(self) -> list[Problem]:
        """Every object present with the manifest's size (no content read); local sets are
        checked in full (they are on this disk)."""
        raise NotImplementedError

    def open_stored(self, rel: str) -> Any:
        raise NotImplementedError

    def open_plain(self, rel: str) -> Any:
        """The object's content: decrypted when the set is encrypted (after :meth:`unlock`)."""
        src = self.open_stored(rel)
        if not self.encrypted:
            return src
        if self.identity is None:
            raise BackupError(f"backup set {self.name} is encrypted: unlock it with an identity")
        return DecryptingReader(src, self.identity, rel)

    def hash_all(self, skip: set[str] | None = None) -> list[Problem]:
        """Read every object once, checking size and sha256 (``skip``: those already read)."""
        problems = []
        for f in self.manifest.files:
            if f.path in (skip or set()):
                continue
            r = self.open_stored(f.path)
            try:
                while r.read(1 << 20):
                    pass
            except BackupError as exc:
                problems.append(Problem(f.path, str(exc).removeprefix(f"{f.path}: ")))
            finally:
                r.close()
        return problems

    @contextmanager
    def schema_dir(self) -> Iterator[Path]:
        """pg_dump's archive of the set, in a local directory pg_restore can read."""
        work = Path(tempfile.mkdtemp(prefix="studyhub-restore-schema-"))
        try:
            dump = work / DUMP_DIR
            dump.mkdir()
            for f in self.manifest.files:
                if not f.path.startswith(DUMP_DIR + "/"):
                    continue
                plain = f.path.removesuffix(AGE_SUFFIX) if self.encrypted else f.path
                src = self.open_plain(f.path)
                try:
                    with open(work / plain, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                finally:
                    src.close()
            yield dump
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def set_ledger(self) -> list[ledger.LedgerEntry] | None:
        """The erasure ledger the set carries (format 3), or None."""
        rel = self.manifest.ledger_file
        if not rel:
            return None
        src = self.open_plain(rel)
        try:
            data = b"".join(iter(lambda: src.read(1 << 20), b""))
        finally:
            src.close()
        return ledger.parse_ledger(data.decode(), f"{self.name}/{rel}")

    def carried_ledgers(self) -> dict[str, list[ledger.LedgerEntry]]:
        """The erasure ledgers a restore re-applies from the target, by source name: the one
        this set carries (a local directory also has its ledger file beside the sets)."""
        own = self.set_ledger()
        return {f"backup set {self.name}": own} if own is not None else {}

    def record_verified(self, record: dict[str, Any]) -> None:
        raise NotImplementedError


class LocalSetSource(SetSource):
    def __init__(self, set_dir: Path, config: BackupConfig | None) -> None:
        self.set_dir = set_dir
        self.location = str(set_dir)
        self.ledger_dir = set_dir.parent
        sig = set_dir / SIGNATURE
        try:
            raw = (set_dir / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise BackupError(f"{set_dir.name}: {MANIFEST} is missing") from None
        super().__init__(set_dir.name, raw, sig.read_bytes() if sig.is_file() else None, config)

    def size_problems(self) -> list[Problem]:
        problems = check_files(self.set_dir, self.manifest)
        self.hashed = {f.path for f in self.manifest.files}
        return problems

    def open_stored(self, rel: str) -> Any:
        return open(self.set_dir / rel, "rb")

    @contextmanager
    def schema_dir(self) -> Iterator[Path]:
        if not self.encrypted:
            yield self.set_dir / DUMP_DIR  # pg_restore reads the set's own archive
            return
        with super().schema_dir() as d:
            yield d

    def record_verified(self, record: dict[str, Any]) -> None:
        write_json_atomically(self.set_dir / VERIFIED, record, overwrite=True)


class RemoteSetSource(SetSource):
    def __init__(self, store: S3Store, name: str, objects: list[StoredObject],
                 config: BackupConfig | None) -> None:
        self.store = store
        self.location = f"{store.url}/{name}"
        self.listed = {o.rel.removeprefix(f"{name}/"): o.bytes for o in objects}
        raw = store.get_bytes(f"{name}/{MANIFEST}")
        if raw is None:
            raise BackupError(f"{self.location} is not a complete backup set: it has no "
                              f"{MANIFEST}")
        super().__init__(name, raw, store.get_bytes(f"{name}/{SIGNATURE}"), config)

    def size_problems(self) -> list[Problem]:
        problems = []
        listed = {f.path: f for f in self.manifest.files}
        for rel in sorted(set(self.listed) - set(listed) - {MANIFEST, SIGNATURE, VERIFIED}):
            problems.append(Problem(rel, "not in the manifest"))
        for rel, entry in sorted(listed.items()):
            size = self.listed.get(rel)
            if size is None:
                problems.append(Problem(rel, "missing"))
            elif size != entry.bytes:
                problems.append(Problem(rel, f"size {size} bytes, manifest says {entry.bytes}"
                                        + (" (truncated)" if size < entry.bytes else "")))
        return problems

    def open_stored(self, rel: str) -> Any:
        entry = next((f for f in self.manifest.files if f.path == rel), None)
        if entry is None:
            raise BackupError(f"{rel} is not in the manifest of {self.name}")
        return HashingReader(self.store.reader(f"{self.name}/{rel}"), rel, entry.bytes,
                             entry.sha256, on_checked=self.hashed.add)

    def carried_ledgers(self) -> dict[str, list[ledger.LedgerEntry]]:
        """This set's ledger and those of the newer sets of the same database in the bucket:
        object storage has no ledger file beside the sets, the newest set carries the newest
        ledger (so an old set restored after the live database was lost still has its later
        erasures re-applied). A newer set this identity cannot read (other recipients), or
        whose signature does not verify where one is required, is skipped and named."""
        out = super().carried_ledgers()
        mine = NAME_RE.fullmatch(self.name)
        names = sorted({o.rel.split("/", 1)[0] for o in self.store.objects()
                        if o.rel.endswith(f"/{MANIFEST}")})
        for name in names:
            other_name = NAME_RE.fullmatch(name)
            if not mine or not other_name or other_name["stamp"] <= mine["stamp"]:
                continue
            try:
                other = RemoteSetSource(self.store, name, self.store.objects(f"{name}/"),
                                        self.config)
                if (other.manifest.database != self.manifest.database
                        or not other.manifest.ledger_file):
                    continue
                other.identity = self.identity if other.encrypted else None
                if other.encrypted and (self.identity is None or identity_fingerprint(
                        self.identity) not in other.manifest.recipients):
                    raise BackupError("not encrypted for this identity")
                entries = other.set_ledger()
            except BackupError:
                out[f"backup set {name} (unreadable)"] = []
                continue
            out[f"backup set {name}"] = entries or []
        return out

    def record_verified(self, record: dict[str, Any]) -> None:
        """Best effort: a restore host's credentials may be read-only (the result is
        returned all the same; only `list` would not show it)."""
        try:
            self.store.put_bytes(f"{self.name}/{VERIFIED}", json.dumps(record).encode())
        except BackupError:
            pass


def verified_record(ok: bool, restored: bool, problems: int) -> dict[str, Any]:
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ok": ok,
            "restored": restored, "problems": problems}
