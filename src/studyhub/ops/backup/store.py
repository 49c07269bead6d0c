"""Backup targets — where sets are kept — and the sets in each: a local directory
(:class:`LocalTarget`: a path or ``file:///PATH``, as before) or a bucket and prefix of an
S3-compatible object store (:class:`RemoteTarget`: ``s3://BUCKET/PREFIX``, DigitalOcean Spaces,
AWS S3 …). Both hold the same layout, one set per name (``setformat.py``); ``setio.py``
writes and reads one set, this module lists, opens and deletes them.

A remote set is complete when its ``manifest.json`` exists (uploaded last). Objects under a
set's name without a manifest, and multipart uploads never completed, are leftovers of a create
that did not finish: ``in-progress`` while anything of them is newer than the abandon age
(default 24 h: a create may still be uploading, perhaps from another host), ``incomplete``
after, when ``prune`` removes the objects and aborts the uploads.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pyrage import x25519

from studyhub.ops.backup.s3 import OpenUpload, S3Store, StoredObject
from studyhub.ops.backup.setformat import (
    MANIFEST,
    NAME_RE,
    PARTIAL_PREFIX,
    SIGNATURE,
    VERIFIED,
    BackupError,
    BackupSetInfo,
    default_backup_dir,
    list_sets,
    parse_manifest,
    resolve_set,
)
from studyhub.ops.backup.setio import (
    LocalSetSource,
    LocalSetWriter,
    RemoteSetSource,
    RemoteSetWriter,
    SetSource,
    SetWriter,
)
from studyhub.profiles import BackupConfig

DEFAULT_ABANDONED_AFTER_H = 24.0
ORPHANED_UPLOADS = "orphaned-uploads"  # status of a complete set's stray uploads (prune aborts)


class Target:
    """Where sets are kept (one of the two kinds below)."""

    url: str
    remote: bool = False

    def list_sets(self, abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H) -> list[BackupSetInfo]:
        raise NotImplementedError

    def open_set(self, ref: str, config: BackupConfig | None) -> SetSource:
        raise NotImplementedError

    def writer(self, name: str, recipients: list[x25519.Recipient] | None, signing_key: Any,
               jobs: int) -> SetWriter:
        raise NotImplementedError

    def check_writable(self) -> None:
        """Fail early (before a snapshot is taken) where the target cannot be written."""

    def delete_set(self, info: BackupSetInfo) -> bool:
        """Delete a set or leftover; False when there was nothing left to delete."""
        raise NotImplementedError

    @property
    def ledger_dir(self) -> Path | None:
        """The directory whose erasure-ledger file create updates and restore reads."""
        return None


class LocalTarget(Target):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)

    def list_sets(self, abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H) -> list[BackupSetInfo]:
        return list_sets(self.root)

    def open_set(self, ref: str, config: BackupConfig | None) -> LocalSetSource:
        return LocalSetSource(resolve_set(ref, self.root), config)

    def writer(self, name: str, recipients: list[x25519.Recipient] | None, signing_key: Any,
               jobs: int) -> LocalSetWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / name).exists():
            raise BackupError(f"{self.root / name} already exists (two backups in the same second)")
        return LocalSetWriter(self.root, name, recipients, signing_key, jobs)

    def delete_set(self, info: BackupSetInfo) -> bool:
        """A set is first renamed to a .partial- name, so a deletion interrupted half-way
        never leaves something that looks complete."""
        path = Path(info.path)
        if not path.exists():
            return False
        if not path.name.startswith(PARTIAL_PREFIX):
            doomed = path.with_name(f"{PARTIAL_PREFIX}{path.name}-deleting")
            os.rename(path, doomed)
            path = doomed
        shutil.rmtree(path)
        return True

    @property
    def ledger_dir(self) -> Path:
        return self.root


class RemoteTarget(Target):
    remote = True

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.url = store.url

    def check_writable(self) -> None:
        self.store.check_bucket()

    def _grouped(self) -> tuple[dict[str, list[StoredObject]], dict[str, list[OpenUpload]]]:
        objects: dict[str, list[StoredObject]] = {}
        uploads: dict[str, list[OpenUpload]] = {}
        for o in self.store.objects():
            name, sep, _rest = o.rel.partition("/")
            if sep:
                objects.setdefault(name, []).append(o)
        for u in self.store.open_uploads():
            uploads.setdefault(u.rel.partition("/")[0], []).append(u)
        return objects, uploads

    def list_sets(self, abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H) -> list[BackupSetInfo]:
        """Complete sets (oldest first), then leftovers (objects without a manifest, and
        multipart uploads never completed)."""
        objects, uploads = self._grouped()
        now = datetime.now(timezone.utc)
        complete: list[BackupSetInfo] = []
        leftovers: list[BackupSetInfo] = []
        for name in sorted(set(objects) | set(uploads)):
            objs, ups = objects.get(name, []), uploads.get(name, [])
            keys = {o.rel.removeprefix(f"{name}/") for o in objs}
            path = f"{self.url}/{name}"
            if MANIFEST in keys:
                raw = self.store.get_bytes(f"{name}/{MANIFEST}") or b""
                try:
                    m = parse_manifest(name, raw)
                except BackupError as exc:
                    leftovers.append(BackupSetInfo(name, path, "incomplete", None, None, None,
                                                   sum(o.bytes for o in objs), problem=str(exc),
                                                   target=self.url))
                    continue
                verified = None
                if VERIFIED in keys:
                    try:
                        verified = json.loads(self.store.get_bytes(f"{name}/{VERIFIED}") or b"null")
                    except ValueError:
                        verified = None
                complete.append(BackupSetInfo(
                    name, path, "complete", m.profile, m.database, m.started_at, m.total_bytes,
                    len(m.tables), m.total_rows, m.alembic_revision, str(m.compression),
                    verified, encrypted_for=m.recipients if m.encryption else None,
                    target=self.url, format=m.format))
                if ups:  # cannot happen by our hand; aborted by prune all the same
                    newest = max(u.initiated for u in ups)
                    leftovers.append(BackupSetInfo(
                        name, path, ORPHANED_UPLOADS, None, None,
                        newest.isoformat(timespec="seconds"), 0,
                        problem=f"{len(ups)} unfinished multipart upload(s) beside a complete set",
                        target=self.url))
                continue
            if not NAME_RE.fullmatch(name):
                continue  # not ours
            times = [o.modified for o in objs] + [u.initiated for u in ups]
            newest = max(times)
            age = now - newest
            fresh = age < timedelta(hours=abandoned_after_h)
            what = (f"{len(objs)} object(s) without a manifest" if objs else "no object yet") + (
                f", {len(ups)} unfinished multipart upload(s)" if ups else "")
            leftovers.append(BackupSetInfo(
                name, path, "in-progress" if fresh else "incomplete", None, None,
                newest.isoformat(timespec="seconds"), sum(o.bytes for o in objs),
                problem=f"creation did not finish ({what}; newest {_ago(age)} ago)",
                target=self.url))
        complete.sort(key=lambda s: s.created_at or "")
        return complete + leftovers

    def open_set(self, ref: str, config: BackupConfig | None) -> RemoteSetSource:
        if not NAME_RE.fullmatch(ref):
            raise BackupError(f"{ref!r} is not a backup set name (see: studyhub backup list "
                              f"--target {self.url})")
        objs = self.store.objects(f"{ref}/")
        if not objs:
            raise BackupError(f"no backup set {ref} in {self.url}; see: studyhub backup list "
                              f"--target {self.url}")
        return RemoteSetSource(self.store, ref, objs, config)

    def writer(self, name: str, recipients: list[x25519.Recipient] | None, signing_key: Any,
               jobs: int) -> RemoteSetWriter:
        if self.store.objects(f"{name}/"):
            raise BackupError(f"{self.url}/{name} already exists (two backups in the same second)")
        return RemoteSetWriter(self.store, name, recipients, signing_key, jobs)

    def delete_set(self, info: BackupSetInfo) -> bool:
        """The manifest first (the set stops being complete at once), then the rest; the
        set's unfinished multipart uploads are aborted (only those, for stray uploads beside
        a complete set)."""
        rels = [] if info.status == ORPHANED_UPLOADS else [
            o.rel for o in self.store.objects(f"{info.name}/")]
        first = [r for r in rels if r.endswith(f"/{MANIFEST}") or r.endswith(f"/{SIGNATURE}")]
        if first:
            self.store.delete(first)
        self.store.delete([r for r in rels if r not in first])
        uploads = [u for u in self.store.open_uploads() if u.rel.startswith(f"{info.name}/")]
        for u in uploads:
            self.store.abort_upload(u)
        return bool(rels or uploads)


def _ago(delta: timedelta) -> str:
    s = delta.total_seconds()
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def open_target(spec: str | Path | Target | None = None,
                config: BackupConfig | None = None) -> Target:
    """A target from ``s3://BUCKET/PREFIX``, ``file:///PATH`` or a directory; ``None``: the
    profile's configured target, else the backup directory ($STUDYHUB_BACKUP_DIR)."""
    if isinstance(spec, Target):
        return spec
    config = config or BackupConfig()
    raw = spec if spec is not None else config.target
    if raw is None:
        return LocalTarget(default_backup_dir())
    text = str(raw)
    if text.startswith("s3://"):
        return RemoteTarget(S3Store(text, config))
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise BackupError("a file:// target is file:///ABSOLUTE/PATH (this machine)")
        return LocalTarget(Path(unquote(parts.path)))
    if "://" in text:
        raise BackupError(f"unknown target {text.split('://')[0]}://…; use s3://BUCKET/PREFIX, "
                          "file:///PATH or a directory")
    return LocalTarget(Path(text))


def open_source(ref: str | Path, target: str | Path | Target | None = None,
                config: BackupConfig | None = None) -> SetSource:
    """A complete set: ``s3://BUCKET/PREFIX/NAME`` (whole URL), a name in ``target`` (else the
    profile's configured target, else the backup directory), or a set directory's path."""
    text = str(ref)
    if text.startswith("s3://") and target is None:
        parent, _, name = text.rstrip("/").rpartition("/")
        return open_target(parent, config).open_set(name, config)
    if target is None and Path(text).is_dir():
        return LocalSetSource(resolve_set(text), config)
    return open_target(target, config).open_set(text, config)


def list_target_sets(target: str | Path | Target | None = None, *,
                     config: BackupConfig | None = None,
                     abandoned_after_h: float = DEFAULT_ABANDONED_AFTER_H) -> list[BackupSetInfo]:
    """The sets of any target, local or remote: complete ones (oldest first, with
    ``created_at``) then leftovers (``status`` incomplete / in-progress)."""
    return open_target(target, config).list_sets(abandoned_after_h)
