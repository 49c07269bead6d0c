"""The local cluster's base backups and WAL archive (the first layer of the local backend of
``studyhub cluster``, with PostgreSQL's own machinery).

- Base backups: ``pg_basebackup`` (tar + zstd, with its WAL and a manifest) into
  ``$STUDYHUB_HOME/basebackups/<label>/``; a backup is written to ``<label>.part`` and only
  renamed once complete, so one that did not finish never looks finished.
- WAL archive: the primary archives every segment into ``$STUDYHUB_HOME/wal-archive/``
  (``studyhub.local.config``). The recoverable window runs from the end of the oldest usable
  base backup to the newest transaction in the archive (read with ``pg_waldump``).
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from studyhub.atomic_file import atomic_directory
from studyhub.connect import connect
from studyhub.local import BACKUP_META, REPLICATION_ROLE, SEGMENT_RE, LocalCluster, proc
from studyhub.ops.cluster.types import (
    Backup,
    Backups,
    ClusterOpError,
    Plan,
    Progress,
    RecoveryWindow,
    WalArchive,
    _noop,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

SEGMENTS_PER_XLOGID = 0x100000000 // (16 * 1024 * 1024)  # 16 MB segments (initdb default)
WALDUMP_SEGMENTS = 16  # how many of the newest segments to search for the last transaction
_TXN_TIME_RE = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc)


def _parse_pg_time(text: str) -> datetime | None:
    try:
        raw = text.strip()
        if raw.endswith(" UTC"):
            raw = raw[:-4] + "+00:00"
        ts = datetime.fromisoformat(raw)
        return _utc(ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc))
    except ValueError:
        return None


def _segment_number(name: str) -> tuple[int, int]:
    """(timeline, absolute segment number) of a WAL file name."""
    m = SEGMENT_RE.fullmatch(name)
    assert m
    return int(m[1], 16), int(m[2], 16) * SEGMENTS_PER_XLOGID + int(m[3], 16)


def _segment_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // SEGMENTS_PER_XLOGID:08X}{segno % SEGMENTS_PER_XLOGID:08X}"


def _lsn_segment(timeline: int, lsn: str) -> str:
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    return _segment_name(timeline, ((hi << 32) | lo) // (16 * 1024 * 1024))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class LocalArchive:
    """Base backups and the WAL archive of the local cluster (``$STUDYHUB_HOME``)."""

    provider = "local"

    def __init__(self, profile: Profile, cluster: LocalCluster | None = None) -> None:
        self.profile = profile
        self.cluster = cluster or LocalCluster()

    # ------------------------------------------------------------------ helpers
    def _primary_running(self) -> bool:
        return self.cluster._postmaster_pid(self.cluster.primary_dir) is not None

    def _require_primary(self, what: str) -> None:
        if not self._primary_running():
            raise ClusterOpError(f"{what} needs the local primary running: studyhub local up")

    def _now(self) -> datetime:
        """The primary's clock (the one commit timestamps come from) when it runs."""
        if self._primary_running():
            with self._ops() as conn:
                return _utc(conn.execute("SELECT now()").fetchone()[0])
        return datetime.now(timezone.utc)

    def _ops(self) -> psycopg.Connection:
        """Reads need no more than the ops role (pg_monitor)."""
        return connect(self.profile, "ops", autocommit=True, application_name="studyhub cluster")


    # ------------------------------------------------------------- base backups
    def _read_backups(self) -> list[dict[str, Any]]:
        """Complete base backups (those with backup.json), oldest first."""
        return self.cluster.read_base_backups()

    def base_backups(self) -> list[Backup]:
        """Complete base backups, oldest first (their backup.json files; no server needed)."""
        return [self._backup(b) for b in self._read_backups()]

    @staticmethod
    def _backup(data: dict[str, Any]) -> Backup:
        return Backup(
            created_at=datetime.fromisoformat(data["started_at"]),
            kind="base",
            size_bytes=data.get("size_bytes"),
            label=data["label"],
            finished_at=datetime.fromisoformat(data["finished_at"]),
            path=data["path"],
        )

    def basebackup_plan(self, keep: int | None = None, *, offline: bool = False) -> Plan:
        self._require_primary("a base backup")
        with self._ops() as conn:
            archive_mode = conn.execute("SHOW archive_mode").fetchone()[0]
        if archive_mode != "on":
            raise ClusterOpError(
                "the local primary runs without WAL archiving (started before it was added); "
                "restart it once: studyhub local down && studyhub local up"
            )
        if keep is not None and keep < 1:
            raise ClusterOpError("--keep must be at least 1 (the new backup)")
        existing = self._read_backups()
        doomed = existing[: max(0, len(existing) - (keep - 1))] if keep else []
        summary = [
            f"pg_basebackup of the primary (port {self.cluster.load_state().primary_port}, "
            f"fast checkpoint) into {self.cluster.basebackups_dir}/base-<time>/ "
            f"(tar + zstd, with its WAL and a manifest)",
        ]
        if doomed:
            summary.append("then delete older base backups: "
                           + ", ".join(b["label"] for b in doomed))
            summary.append("and archived WAL older than the oldest backup kept (pg_archivecleanup)")
        return Plan("local", "basebackup", "local", summary,
                    params={"keep": keep, "delete": [b["label"] for b in doomed]})

    def basebackup(self, plan: Plan, *, progress: Progress = _noop) -> Backup:
        c = self.cluster
        root = c.basebackups_dir
        root.mkdir(exist_ok=True)
        proc.chown_to_server(root)
        root.chmod(0o700)
        started = self._now()
        label = "base-" + started.strftime("%Y%m%dT%H%M%SZ")
        n = 1
        while (root / label).exists() or (root / f"{label}.part").exists():
            n += 1
            label = "base-" + started.strftime("%Y%m%dT%H%M%SZ") + f"-{n}"
        # Built as <label>.part (pg_basebackup makes the directory itself and syncs what it
        # writes), renamed into place only once complete: never something that looks like one.
        with atomic_directory(root / label, temp_name=f"{label}.part", create=False,
                              fsync=False) as part:
            progress(f"pg_basebackup → {part.name}")
            proc.run_server_cmd(
                [str(proc.pg_program("pg_basebackup")), "-h", "127.0.0.1", "-p",
                 str(c.load_state().primary_port), "-U", REPLICATION_ROLE, "-D", str(part),
                 "-Ft", "-X", "stream", "--compress=client-zstd:1", "-c", "fast",
                 "-l", f"studyhub {label}", "--no-password"],
                env={"PGPASSFILE": str(c.replicator_passfile)},
                what="pg_basebackup",
                timeout=6 * 3600,
            )
            finished = self._now()
            # pg_basebackup 15 compresses only base.tar with zstd; its WAL tar is compressed here.
            proc.run_server_cmd(["zstd", "-q", "-1", "--rm", str(part / "pg_wal.tar")],
                                what="zstd (backup WAL)", timeout=3600)
            manifest = json.loads((part / "backup_manifest").read_text())
            wal = manifest["WAL-Ranges"][0]
            meta = {
                "label": label,
                "started_at": started.isoformat(),
                "finished_at": finished.isoformat(),
                "timeline": wal["Timeline"],
                "start_lsn": wal["Start-LSN"],
                "end_lsn": wal["End-LSN"],
                "start_segment": _lsn_segment(wal["Timeline"], wal["Start-LSN"]),
                "format": "tar+zstd",
                "size_bytes": _dir_bytes(part),
            }
            proc.write_private(part / BACKUP_META, json.dumps(meta, indent=2) + "\n",
                               server_owned=True)
        for old in plan.params.get("delete") or []:
            progress(f"deleting base backup {old}")
            shutil.rmtree(root / old)
        if plan.params.get("delete"):
            oldest = self._read_backups()[0]
            progress(f"removing archived WAL before {oldest['start_segment']}")
            proc.run_server_cmd(
                [str(proc.pg_program("pg_archivecleanup")), str(c.wal_archive_dir),
                 oldest["start_segment"]],
                what="pg_archivecleanup",
            )
        meta["path"] = str(root / label)
        return self._backup(meta)

    # -------------------------------------------------------------- WAL archive
    def _last_transaction_at(self, names: list[str]) -> datetime | None:
        """Newest commit/abort time in the newest archived segments (pg_waldump)."""
        waldump = str(proc.pg_program("pg_waldump"))
        for name in reversed(names[-WALDUMP_SEGMENTS:]):
            out = proc.run_server_cmd(
                [waldump, "--rmgr=Transaction", str(self.cluster.wal_archive_dir / name)],
                check=False, what="pg_waldump",
            ).stdout
            times = [t for t in (_parse_pg_time(m) for m in _TXN_TIME_RE.findall(out)) if t]
            if times:
                return max(times)
        return None

    def wal_archive(self) -> WalArchive:
        d = self.cluster.wal_archive_dir
        files = sorted(p for p in d.iterdir() if SEGMENT_RE.fullmatch(p.name)) if d.is_dir() else []
        gaps: list[str] = []
        if files:
            newest_tli = _segment_number(files[-1].name)[0]
            numbers = [_segment_number(p.name)[1] for p in files
                       if _segment_number(p.name)[0] == newest_tli]
            have = set(numbers)
            gaps = [_segment_name(newest_tli, n) for n in range(numbers[0], numbers[-1])
                    if n not in have]
        result = WalArchive(
            directory=str(d),
            segments=len(files),
            total_bytes=sum(p.stat().st_size for p in files),
            first_segment=files[0].name if files else None,
            last_segment=files[-1].name if files else None,
            last_archived_at=(datetime.fromtimestamp(files[-1].stat().st_mtime, timezone.utc)
                              if files else None),
            last_commit_at=self._last_transaction_at([p.name for p in files]) if files else None,
            gaps=gaps[:20],
        )
        if self._primary_running():
            with self._ops() as conn:
                row = conn.execute(load("get_archiver_status")).fetchone()
            result.archiver_failed_count = row[4]
            result.last_failed_wal = row[5]
            result.last_failed_at = row[6]
        return result

    def _window(self, backups: list[dict[str, Any]], archive: WalArchive) -> RecoveryWindow:
        if not backups:
            return RecoveryWindow(None, None, "no base backup yet: run studyhub cluster basebackup")
        usable = backups
        if archive.gaps:
            last_gap = archive.gaps[-1]
            usable = [b for b in backups if b["start_segment"] > last_gap]
            if not usable:
                return RecoveryWindow(None, None, f"the WAL archive misses segment {last_gap} "
                                      "after every base backup; take a new base backup")
        earliest = datetime.fromisoformat(usable[0]["finished_at"])
        latest = archive.last_commit_at
        if latest is None or latest < earliest:
            return RecoveryWindow(earliest, None, "no transaction archived since the oldest base "
                                  "backup ended")
        return RecoveryWindow(earliest, latest,
                              "end of the oldest base backup … newest archived transaction")

    def backups(self) -> Backups:
        raw = self._read_backups()
        archive = self.wal_archive()
        return Backups(
            provider="local",
            cluster=str(self.cluster.home),
            backups=[self._backup(b) for b in reversed(raw)],
            window=self._window(raw, archive),
            wal_archive=archive,
            schedule="on demand: studyhub cluster basebackup (e.g. from cron)",
        )
