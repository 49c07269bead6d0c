"""The backup set: layout, manifest, file checksums, verification and listing of a set
directory (retention is in ``retention.py``; sets in object storage: ``store.py``).

A backup set is one directory (or one prefix of an object store), named
``{profile}-{database}-{YYYYmmddTHHMMSSZ}``. Format 3 (written by ``backup create``)::

    manifest.json      what the set is: versions, revision, tables (rows + checksum), files,
                       which data file holds which table (with its column list), and whether
                       it is encrypted (age; the recipients' fingerprints, never keys)
    manifest.sig       the manifest's Ed25519 signature, when the profile signs (signing.py)
    dump/              a pg_dump directory-format archive without table data: schema,
                       sequence values (SEQUENCE SET), indexes, constraints (toc.dat)
    data/              one file per table: its rows as ``COPY ... (FORMAT binary)``,
                       ``<schema>.<table>.bin.zst`` (``.bin.gz`` with gzip, ``.bin`` with none)
    erasure-ledger.jsonl  the erasure ledger at backup time (re-applied by a restore)
    verified.json      written by ``backup verify`` (not in the manifest, like manifest.sig)

A portable set (``"format": "sql"`` in its manifest, ``sql_set.py``) has, instead of ``dump/``
and ``data/``, one plain SQL dump by pg_dump, ``dump.sql.zst`` (``.sql.gz``, ``.sql``),
restorable with stock tools; the manifest, signature and ledger are as in a native set.

In an encrypted set every file but manifest.json, manifest.sig and verified.json is an age
file, named with ``.age`` added (``data/public.notes.bin.zst.age``). Format 2 is format 3
without encryption, signature and ledger; it is still restored.

Format 1 (still restored): ``dump/`` is a complete pg_dump directory archive, with one
``NNNN.dat[.zst|.gz]`` text-format COPY file per table, and there is no ``data/``.

It is written under ``.partial-{name}-{pid}`` in the same directory, fsynced, checked against
its manifest and only then renamed: a directory without a manifest, or under a ``.partial-``
name, is never a complete set. Sets are never modified after the rename.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from studyhub.atomic_file import is_temporary
from studyhub.errors import StudyhubError
from studyhub.hashing import sha256_file
from studyhub.paths import studyhub_home

FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
SET_FORMATS = ("native", "sql")  # a manifest's "format": binary COPY per table, or plain SQL
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LEDGER = "erasure-ledger.jsonl"
DUMP_DIR = "dump"
DATA_DIR = "data"
VERIFIED = "verified.json"
PARTIAL_PREFIX = ".partial-"
NAME_RE = re.compile(r"(?P<profile>[a-z]+)-(?P<database>.+)-(?P<stamp>\d{8}T\d{6}Z)")  # fullmatch
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class BackupError(StudyhubError):
    """A backup set is missing, malformed, incomplete or does not match its manifest."""


@dataclass
class TableChecksum:
    schema: str
    table: str
    rows: int
    checksum: str  # decimal sum of 64-bit row hashes, as text (exact, any size)
    method: str = "record-hash"  # record-hash | text-hash (see ops/sql/get_table_rows_and_*)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class FileEntry:
    path: str  # relative to the set directory
    bytes: int
    sha256: str


@dataclass
class TableFile:
    """Format 2: the data file holding one table's rows (binary COPY of ``columns``)."""

    schema: str
    table: str
    path: str  # relative to the set directory
    columns: list[str]
    raw_bytes: int = 0  # size of the binary COPY stream before compression

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Compression:
    method: str  # zstd | gzip | none
    level: int | None = None

    def __str__(self) -> str:
        return self.method if self.level is None else f"{self.method}:{self.level}"


@dataclass
class Manifest:
    format_version: int
    tool: str
    tool_version: str
    pg_dump_version: str
    server_version: str
    profile: str
    host: str
    port: int
    database: str
    encoding: str
    direct: bool  # dumped from the server's own port (never through a pooler)
    alembic_revision: list[str]
    started_at: str
    finished_at: str
    snapshot: str
    compression: Compression
    jobs: int
    dump_format: str
    extensions: list[dict[str, str]]
    tables: list[TableChecksum]
    files: list[FileEntry]
    durations_s: dict[str, float] = field(default_factory=dict)
    erasure_ledger_entries: int | None = None  # entries kept beside the sets at backup time
    server_major: int | None = None  # format 2: binary COPY restores onto this major or newer
    table_files: list[TableFile] = field(default_factory=list)  # format 2
    # format 3: {"method": "age-x25519", "recipients": ["sha256:…", …]} or None (in clear)
    encryption: dict[str, Any] | None = None
    ledger_file: str | None = None  # the erasure ledger inside the set (a file of ``files``)
    signed_by: str | None = None  # fingerprint of the key whose signature is manifest.sig
    format: str = "native"  # native | sql (one plain SQL dump: ``sql_file``)
    sql_file: str | None = None  # the sql set's dump (a file of ``files``)

    @property
    def recipients(self) -> list[str]:
        return list((self.encryption or {}).get("recipients") or [])

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        data["compression"] = Compression(**data["compression"])
        data["tables"] = [TableChecksum(**t) for t in data["tables"]]
        data["files"] = [FileEntry(**f) for f in data["files"]]
        data["table_files"] = [TableFile(**f) for f in data.get("table_files") or []]
        return cls(**data)


@dataclass
class BackupSetInfo:
    """One entry of ``backup list``: a complete set, or a leftover that prune may remove."""

    name: str
    path: str
    status: str  # complete | incomplete | in-progress
    profile: str | None
    database: str | None
    created_at: str | None  # UTC, ISO 8601
    bytes: int
    tables: int | None = None
    rows: int | None = None
    alembic_revision: list[str] | None = None
    compression: str | None = None
    verified: dict[str, Any] | None = None  # last `backup verify` result
    problem: str | None = None  # why it is not complete
    encrypted_for: list[str] | None = None  # recipients' fingerprints (None: in clear)
    target: str | None = None  # where it is: a directory, or s3://BUCKET/PREFIX
    format: str | None = None  # a complete set's: native | sql


@dataclass
class Problem:
    path: str
    issue: str

    def __str__(self) -> str:
        return f"{self.path}: {self.issue}"


# --------------------------------------------------------------------------- naming, dirs
def default_backup_dir() -> Path:
    raw = os.environ.get("STUDYHUB_BACKUP_DIR")
    return (Path(raw) if raw else studyhub_home() / "backups").absolute()


def set_name(profile: str, database: str, when: datetime) -> str:
    safe_db = re.sub(r"[^A-Za-z0-9_.]", "_", database)
    return f"{profile}-{safe_db}-{when.astimezone(timezone.utc).strftime(STAMP_FORMAT)}"


def resolve_set(ref: str | Path, backup_dir: Path | None = None) -> Path:
    """A set given as a path, or as a name inside the backup directory; must be complete."""
    path = Path(ref)
    if not path.exists() and not path.is_absolute():
        path = (backup_dir or default_backup_dir()) / ref
    if not path.exists():
        raise BackupError(f"no backup set {ref} (looked in {path.parent}); see: studyhub backup list")
    if path.name.startswith(PARTIAL_PREFIX):
        raise BackupError(f"{path.name} is an incomplete backup (its creation never finished)")
    if not (path / MANIFEST).is_file():
        raise BackupError(f"{path} is not a complete backup set: it has no {MANIFEST}")
    return path.resolve()


# ------------------------------------------------------------------------------- checksums
def hash_files(root: Path, paths: Iterable[Path], jobs: int = 2) -> list[FileEntry]:
    """sha256 and size of each file (hashlib releases the GIL: threads hash in parallel)."""
    paths = sorted(paths)

    def one(p: Path) -> FileEntry:
        return FileEntry(str(p.relative_to(root)), p.stat().st_size, sha256_file(p))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, paths))


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as stored (and signed): JSON, two-space indent, a final newline."""
    return (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()


def read_manifest(set_dir: Path) -> Manifest:
    path = set_dir / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{set_dir.name}: {MANIFEST} is missing") from None
    return parse_manifest(set_dir.name, raw)


def parse_manifest(name: str, raw: bytes) -> Manifest:
    """A manifest from its bytes (``name``: the set, for messages)."""
    set_dir = Path(name)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{set_dir.name}: {MANIFEST} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format_version") not in READABLE_FORMATS:
        raise BackupError(
            f"{set_dir.name}: unsupported manifest format "
            f"{data.get('format_version') if isinstance(data, dict) else '?'} (this version "
            f"reads formats {', '.join(map(str, READABLE_FORMATS))})"
        )
    if data.get("format", "native") not in SET_FORMATS:
        raise BackupError(f"{set_dir.name}: unsupported set format {data.get('format')!r} (this "
                          f"version reads {' and '.join(SET_FORMATS)} sets)")
    try:
        manifest = Manifest.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise BackupError(f"{set_dir.name}: {MANIFEST} is malformed ({exc})") from None
    if manifest.format == "sql" and manifest.sql_file not in {f.path for f in manifest.files}:
        raise BackupError(f"{set_dir.name}: {MANIFEST} is malformed (its SQL dump is not one "
                          "of its files)")
    return manifest


def check_files(set_dir: Path, manifest: Manifest, jobs: int = 2) -> list[Problem]:
    """Every file of the manifest present with its size and sha256; no file the manifest does
    not list (apart from verified.json). Returns the problems, each naming its file."""
    problems: list[Problem] = []
    listed = {f.path: f for f in manifest.files}
    present = {
        str(p.relative_to(set_dir))
        for p in set_dir.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE, VERIFIED, VERIFIED + ".tmp")
        and not is_temporary(p.name, VERIFIED)  # a `backup verify` writing it right now
    }
    for extra in sorted(present - listed.keys()):
        problems.append(Problem(extra, "not in the manifest"))
    to_hash = []
    for rel, entry in sorted(listed.items()):
        p = set_dir / rel
        if rel not in present:
            problems.append(Problem(rel, "missing"))
        elif p.stat().st_size != entry.bytes:
            problems.append(Problem(rel, f"size {p.stat().st_size} bytes, manifest says {entry.bytes}"))
        else:
            to_hash.append(p)
    for got in hash_files(set_dir, to_hash, jobs):
        if got.sha256 != listed[got.path].sha256:
            problems.append(Problem(got.path, "sha256 differs from the manifest (file corrupted)"))
    return problems


# ---------------------------------------------------------------------------------- listing
def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partial_writer_pid(name: str) -> int | None:
    m = re.search(r"-(\d+)\Z", name)  # \Z: "$" would also match before a trailing newline
    return int(m.group(1)) if m else None


def list_sets(backup_dir: Path | None = None) -> list[BackupSetInfo]:
    """Complete sets (oldest first), then leftovers: interrupted creations and directories
    without a valid manifest."""
    root = backup_dir or default_backup_dir()
    if not root.is_dir():
        return []
    complete: list[BackupSetInfo] = []
    leftovers: list[BackupSetInfo] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(PARTIAL_PREFIX):
            pid = partial_writer_pid(entry.name)
            running = pid is not None and _pid_alive(pid)
            leftovers.append(BackupSetInfo(
                entry.name, str(entry), "in-progress" if running else "incomplete", None, None,
                None, _dir_bytes(entry),
                problem="being written" if running else "creation did not finish",
                target=str(root),
            ))
            continue
        if not NAME_RE.fullmatch(entry.name) and not (entry / MANIFEST).exists():
            continue  # not ours
        try:
            m = read_manifest(entry)
        except BackupError as exc:
            leftovers.append(BackupSetInfo(entry.name, str(entry), "incomplete", None, None, None,
                                           _dir_bytes(entry), problem=str(exc), target=str(root)))
            continue
        verified = None
        if (entry / VERIFIED).is_file():
            try:
                verified = json.loads((entry / VERIFIED).read_text())
            except (json.JSONDecodeError, OSError):
                verified = None
        complete.append(BackupSetInfo(
            entry.name, str(entry), "complete", m.profile, m.database, m.started_at,
            m.total_bytes, len(m.tables), m.total_rows, m.alembic_revision, str(m.compression),
            verified, encrypted_for=m.recipients if m.encryption else None, target=str(root),
            format=m.format,
        ))
    complete.sort(key=lambda s: s.created_at or "")
    return complete + leftovers
