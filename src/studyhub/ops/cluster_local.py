"""``studyhub cluster`` on the local embedded cluster, with PostgreSQL's own machinery.

- Base backups: ``pg_basebackup`` (tar + zstd, with its WAL and a manifest) into
  ``$STUDYHUB_HOME/basebackups/<label>/``; a backup is written to ``<label>.part`` and only
  renamed once complete, so one that did not finish never looks finished.
- WAL archive: the primary archives every segment into ``$STUDYHUB_HOME/wal-archive/``
  (``local/cluster.py``). The recoverable window runs from the end of the oldest usable base
  backup to the newest transaction in the archive (read with ``pg_waldump``).
- Forks: a base backup restored into ``$STUDYHUB_HOME/forks/<name>/``, checked against its
  manifest (``pg_verifybackup``), replayed from the archive to ``recovery_target_time`` and
  promoted, on a new port, with archiving off (a fork never writes into the primary's archive).
- Replica: the streaming replica of ``studyhub local up --replica``; pools: PgBouncer
  ``[databases]`` entries (the local counterpart of DigitalOcean's connection pools).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from studyhub.connect import ConnectError, connect
from studyhub.local import proc
from studyhub.local.cluster import (
    APP_DATABASE,
    APP_ROLE,
    OPS_ROLE,
    REPLICA_APP_NAME,
    REPLICATION_ROLE,
    LocalCluster,
    conf_quote,
    pick_free_port,
    port_is_free,
)
from studyhub.ops.cluster import (
    Backup,
    Backups,
    ChangeResult,
    ClusterInfo,
    ClusterOpError,
    Fork,
    ForkErasures,
    ForkResult,
    Node,
    Plan,
    Pool,
    Progress,
    RecoveryWindow,
    Replica,
    WalArchive,
    _noop,
    check_name,
    check_pool,
    erasure_plan_line,
    fork_profile,
    iso,
    reapply_erasures_on_fork,
    refuse_outside,
    streaming_clients,
    verify_profile,
)
from studyhub.ops.queries import load
from studyhub.profiles import Endpoint, Profile

SEGMENT_RE = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")  # a whole name: fullmatch
SEGMENTS_PER_XLOGID = 0x100000000 // (16 * 1024 * 1024)  # 16 MB segments (initdb default)
BACKUP_META = "backup.json"
WALDUMP_SEGMENTS = 16  # how many of the newest segments to search for the last transaction
_TXN_TIME_RE = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
_LOG_STOP_RE = re.compile(r"recovery stopping before (?:commit|abort) of transaction \d+, "
                          r"time (\S+ \S+)")
_LOG_LAST_RE = re.compile(r"last completed transaction was at log time (\S+ \S+)")


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


class LocalBackend:
    """The local cluster (``$STUDYHUB_HOME``) as a cluster provider."""

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

    def _fork_profile(self, port: int) -> Profile:
        return fork_profile(self.profile, f"fork:{port}", None, port)

    def _url(self, port: int) -> str:
        return Endpoint("127.0.0.1", port, APP_DATABASE, APP_ROLE, "disable",
                        passfile=self.cluster.passfile).url()

    # ------------------------------------------------------------- base backups
    def _read_backups(self) -> list[dict[str, Any]]:
        """Complete base backups (those with backup.json), oldest first."""
        root = self.cluster.basebackups_dir
        if not root.is_dir():
            return []
        found = []
        for d in root.iterdir():
            meta = d / BACKUP_META
            if d.is_dir() and not d.name.endswith(".part") and meta.exists():
                data = json.loads(meta.read_text())
                data["path"] = str(d)
                found.append(data)
        return sorted(found, key=lambda b: b["finished_at"])

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
        part = root / f"{label}.part"
        progress(f"pg_basebackup → {part.name}")
        try:
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
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)  # never leave something that looks like one
            raise
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
        part.rename(root / label)
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

    # -------------------------------------------------------------------- forks
    def _fork_meta_path(self, name: str) -> Path:
        return self.cluster.forks_dir / f"{name}.json"

    def _read_fork_meta(self, name: str) -> dict[str, Any] | None:
        path = self._fork_meta_path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def _write_fork_meta(self, meta: dict[str, Any]) -> None:
        path = self._fork_meta_path(meta["name"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(path)

    def _fork_conf_lines(self, meta: dict[str, Any]) -> tuple[str, ...]:
        restore = f"cp {self.cluster.wal_archive_dir}/%f %p"
        return (
            "# point-in-time fork: replay the primary's archive (read-only) up to the target",
            f"restore_command = {conf_quote(restore)}",
            f"recovery_target_time = {conf_quote(meta['target_time'])}",
            "recovery_target_action = 'promote'",
            "recovery_init_sync_method = syncfs",
        )

    def fork_plan(self, at: datetime, name: str, *, offline: bool = False,
                  reapply_erasures: bool = True) -> Plan:
        check_name(name, "fork")
        if (self.cluster.forks_dir / name).exists() or self._fork_meta_path(name).exists():
            raise ClusterOpError(
                f"a fork named {name!r} exists; remove it first: "
                f"studyhub cluster forks remove {name}"
            )
        raw = self._read_backups()
        archive = self.wal_archive()
        window = self._window(raw, archive)
        now = self._now()
        if at > now:
            raise ClusterOpError(f"{iso(at)} is in the future (now {iso(now)})")
        switch = False
        if (window.earliest is not None and self._primary_running()
                and (window.latest is None or at > window.latest)):
            # The newest changes are still in the primary's pg_wal: archive them first.
            window = RecoveryWindow(window.earliest, now,
                                    "end of the oldest base backup … now (the primary's newest "
                                    "WAL is archived first)")
            switch = True
        refuse_outside(window, at)
        candidates = [b for b in raw if datetime.fromisoformat(b["finished_at"]) <= at
                      and (not archive.gaps or b["start_segment"] > archive.gaps[-1])]
        base = candidates[-1]
        target = self.cluster.forks_dir / name
        summary = [
            f"restore base backup {base['label']} "
            f"(ended {iso(datetime.fromisoformat(base['finished_at']))}) into {target}",
            "check the restored files against the backup manifest (pg_verifybackup)",
        ]
        if switch:
            summary.append("archive the primary's newest WAL first (a transaction + pg_switch_wal)")
        summary += [
            f"replay archived WAL up to {iso(at)}, then promote; a new port, archive_mode off",
            "verify: row counts and newest timestamps of the key tables",
            erasure_plan_line(reapply_erasures),
        ]
        return Plan("local", "fork", "local", summary,
                    params={"name": name, "at": at.isoformat(), "base": base["label"],
                            "switch_wal": switch, "reapply_erasures": reapply_erasures},
                    warnings=[] if not archive.archiver_failed_count else [
                        f"the archiver failed {archive.archiver_failed_count} time(s), last on "
                        f"{archive.last_failed_wal}"])

    def _archive_newest_wal(self, progress: Progress, timeout_s: float = 60) -> None:
        progress("archiving the primary's newest WAL")
        with self.cluster.admin_connect() as conn:
            conn.execute("SELECT pg_current_xact_id()")  # a commit record later than the target
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + timeout_s
            while True:
                if (self.cluster.wal_archive_dir / segment).exists():
                    return
                row = conn.execute(load("get_archiver_status")).fetchone()
                last, failed = row[2], row[5]
                if time.monotonic() > deadline:
                    raise ClusterOpError(
                        f"WAL segment {segment} was not archived within {timeout_s:.0f} s "
                        f"(last archived {last}, last failed {failed}); see the primary's log"
                    )
                time.sleep(0.05)

    def fork(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
             poll_interval_s: float = 0.2) -> ForkResult:
        c = self.cluster
        started = time.monotonic()
        p = plan.params
        name = p["name"]
        if p["switch_wal"]:
            self._archive_newest_wal(progress)
        backup_dir = c.basebackups_dir / p["base"]
        c.forks_dir.mkdir(exist_ok=True)
        target = c.forks_dir / name
        state = c.load_state()
        taken = {state.primary_port, state.replica_port, state.pooler_port}
        taken |= {m["port"] for m in self._fork_metas()}
        port = pick_free_port(exclude={x for x in taken if x})
        meta = {"name": name, "port": port, "target_time": p["at"], "base_backup": p["base"],
                "status": "restoring", "created_at": datetime.now(timezone.utc).isoformat(),
                "source": str(c.home)}
        self._write_fork_meta(meta)
        try:
            self._restore(backup_dir, target, p["base"], progress)
        except BaseException:
            # Nothing ran from it yet: remove the half-restored copy rather than leave it around.
            shutil.rmtree(target, ignore_errors=True)
            self._fork_meta_path(name).unlink(missing_ok=True)
            raise
        (target / "standby.signal").unlink(missing_ok=True)
        c._write_conf(target, port, replica=False, archive=False,
                      extra_lines=self._fork_conf_lines(meta))
        signal_file = target / "recovery.signal"
        signal_file.touch()
        proc.chown_to_server(signal_file)
        log = c.logs_dir / f"fork-{name}.log"
        log_offset = log.stat().st_size if log.exists() else 0
        c._start_postgres(target, f"fork-{name}", progress)
        self._wait_promoted(name, port, log, progress, timeout_s, poll_interval_s)
        recovered_to, first_excluded = self._recovery_points(log, log_offset)
        meta.update(status="promoted", recovered_to=recovered_to and recovered_to.isoformat(),
                    first_excluded_at=first_excluded and first_excluded.isoformat())
        self._write_fork_meta(meta)
        progress("verifying the fork")
        verification = verify_profile(self._fork_profile(port))
        erasures = ForkErasures("skipped")
        if p.get("reapply_erasures", True):
            progress("re-applying the erasure ledger to the fork")
            erasures = reapply_erasures_on_fork(self.profile, self._fork_profile(port), name)
        return ForkResult(
            fork=self._fork(meta),
            recovered_to=recovered_to,
            first_excluded_at=first_excluded,
            duration_s=round(time.monotonic() - started, 3),
            verification=verification,
            erasures=erasures,
        )

    @staticmethod
    def _restore(backup_dir: Path, target: Path, label: str, progress: Progress) -> None:
        target.mkdir(mode=0o700)
        proc.chown_to_server(target)
        progress(f"restoring {label}")
        proc.run_server_cmd(["tar", "--zstd", "-xf", str(backup_dir / "base.tar.zst"), "-C",
                             str(target)], what="tar (base backup)", timeout=6 * 3600)
        proc.run_server_cmd(["tar", "--zstd", "-xf", str(backup_dir / "pg_wal.tar.zst"), "-C",
                             str(target / "pg_wal")], what="tar (backup WAL)", timeout=3600)
        progress("checking the restored files against the backup manifest")
        proc.run_server_cmd([str(proc.pg_program("pg_verifybackup")), "-q", "-m",
                             str(backup_dir / "backup_manifest"), str(target)],
                            what="pg_verifybackup", timeout=6 * 3600)

    def _wait_promoted(self, name: str, port: int, log: Path, progress: Progress,
                       timeout_s: float, poll_interval_s: float) -> None:
        target = self.cluster.forks_dir / name
        deadline = time.monotonic() + timeout_s
        while True:
            if self.cluster._postmaster_pid(target) is None:
                raise ClusterOpError(
                    f"fork {name} stopped during recovery: {self.cluster._last_log_error(log)}; "
                    f"remove it with: studyhub cluster forks remove {name}"
                )
            try:
                with self.cluster.admin_connect(port=port) as conn:
                    in_recovery, replayed = conn.execute(
                        "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()"
                    ).fetchone()
                if not in_recovery:
                    return
                progress(f"replaying archived WAL: at {iso(replayed)}")
            except psycopg.OperationalError:
                progress("waiting for the fork to accept connections")
            if time.monotonic() > deadline:
                raise ClusterOpError(
                    f"fork {name} did not finish recovery within {timeout_s:.0f} s; it keeps "
                    f"going (see {log}) — or remove it: studyhub cluster forks remove {name}"
                )
            time.sleep(poll_interval_s)

    @staticmethod
    def _recovery_points(log: Path, offset: int) -> tuple[datetime | None, datetime | None]:
        """(last transaction replayed, first transaction not replayed) from the fork's log."""
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        last = _LOG_LAST_RE.findall(text)
        stop = _LOG_STOP_RE.findall(text)
        return (_parse_pg_time(last[-1]) if last else None,
                _parse_pg_time(stop[-1]) if stop else None)

    def _fork_metas(self) -> list[dict[str, Any]]:
        d = self.cluster.forks_dir
        if not d.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]

    def _fork(self, meta: dict[str, Any]) -> Fork:
        running = self.cluster._postmaster_pid(self.cluster.forks_dir / meta["name"]) is not None
        status = meta["status"]
        if status == "promoted":
            status = "running" if running else "stopped"
        elif not running:
            status = f"incomplete ({status})"
        return Fork(
            name=meta["name"], provider="local", status=status,
            target_time=datetime.fromisoformat(meta["target_time"]),
            source=meta.get("source"), host="127.0.0.1", port=meta["port"],
            database=APP_DATABASE, url=self._url(meta["port"]),
            created_at=datetime.fromisoformat(meta["created_at"]),
            base_backup=meta.get("base_backup"),
        )

    def forks(self) -> list[Fork]:
        return [self._fork(m) for m in self._fork_metas()]

    def _require_fork(self, name: str) -> dict[str, Any]:
        meta = self._read_fork_meta(name)
        if meta is None:
            known = ", ".join(m["name"] for m in self._fork_metas()) or "none"
            raise ClusterOpError(f"no fork named {name!r} (forks: {known})")
        return meta

    def fork_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        meta = self._require_fork(name)
        target = self.cluster.forks_dir / name
        return Plan("local", "fork remove", "local",
                    [f"stop fork {name} (port {meta['port']}) if it runs",
                     f"delete {target} and its log"], params={"name": name})

    def fork_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        name = plan.params["name"]
        target = self.cluster.forks_dir / name
        if (target / "PG_VERSION").exists():
            self.cluster._stop_postgres(target)
        shutil.rmtree(target, ignore_errors=True)
        self._fork_meta_path(name).unlink(missing_ok=True)
        (self.cluster.logs_dir / f"fork-{name}.log").unlink(missing_ok=True)
        return ChangeResult("local", "fork remove", "local", name, "removed",
                            round(time.monotonic() - started, 3))

    def fork_stop(self, name: str) -> Fork:
        meta = self._require_fork(name)
        self.cluster._stop_postgres(self.cluster.forks_dir / name)
        return self._fork(meta)

    def fork_start(self, name: str, *, progress: Progress = _noop) -> Fork:
        meta = self._require_fork(name)
        if meta["status"] != "promoted":
            raise ClusterOpError(f"fork {name} never finished recovery; remove it and fork again")
        target = self.cluster.forks_dir / name
        if self.cluster._postmaster_pid(target) is None:
            if not port_is_free(meta["port"]):
                state = self.cluster.load_state()
                meta["port"] = pick_free_port(exclude={state.primary_port, state.replica_port,
                                                       state.pooler_port} - {None})
                self._write_fork_meta(meta)
            self.cluster._write_conf(target, meta["port"], replica=False, archive=False,
                                     extra_lines=self._fork_conf_lines(meta))
            self.cluster._start_postgres(target, f"fork-{name}", progress)
        return self._fork(meta)

    # ----------------------------------------------------------------- replicas
    def replicas(self) -> list[Replica]:
        st = self.cluster.status()
        if st.replica is None:
            return []
        lag_s = None
        if st.primary.running:
            clients, _ = streaming_clients(self.profile)
            lag_s = next((s.replay_lag_s for s in clients
                          if s.application_name == REPLICA_APP_NAME), None)
        status = ("streaming" if st.replica_streaming else "running, not streaming") \
            if st.replica.running else "stopped"
        return [Replica("replica", status, "127.0.0.1", st.replica.port,
                        lag_bytes=st.replica_lag_bytes, replay_lag_s=lag_s)]

    def replica_add_plan(self, name: str | None, size: str | None, region: str | None, *,
                         offline: bool = False) -> Plan:
        if name not in (None, "replica"):
            raise ClusterOpError("the local cluster has one streaming replica, named 'replica'")
        if self.cluster.load_state().has_replica:
            raise ClusterOpError("the local cluster already has its replica (cluster replica list)")
        self._require_primary("adding a replica")
        warnings = [f"--{k} applies to DigitalOcean only; ignored locally"
                    for k, v in (("size", size), ("region", region)) if v]
        return Plan("local", "replica add", "local",
                    ["pg_basebackup of the primary through the slot studyhub_replica",
                     "start it as a hot standby on a free port and wait until it streams"],
                    params={"name": "replica"}, warnings=warnings)

    def replica_add(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
                    poll_interval_s: float = 10) -> Replica:
        self.cluster.up(replica=True, progress=progress)
        return self.replicas()[0]

    def replica_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        if name != "replica" or not self.cluster.load_state().has_replica:
            known = "replica" if self.cluster.load_state().has_replica else "none"
            raise ClusterOpError(f"no replica named {name!r} (replicas: {known})")
        return Plan("local", "replica remove", "local",
                    [f"stop the replica and delete {self.cluster.replica_dir}",
                     "drop its replication slot on the primary"], params={"name": name})

    def replica_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        self.cluster.remove_replica()
        return ChangeResult("local", "replica remove", "local", "replica", "removed",
                            round(time.monotonic() - started, 3))

    # -------------------------------------------------------------------- resize
    def resize_plan(self, size: str, num_nodes: int | None, *, offline: bool = False) -> Plan:
        raise ClusterOpError(
            "resize does not apply to the local cluster: it has no node sizes (it runs on this "
            "machine with the settings in studyhub.conf); rehearse the DigitalOcean resize with "
            "--profile staging --dry-run"
        )

    def resize(self, plan: Plan, **_: Any) -> ChangeResult:  # pragma: no cover - never planned
        raise AssertionError("unreachable")

    # --------------------------------------------------------------------- pools
    def _pools_state(self) -> dict[str, dict[str, Any]]:
        return dict(self.cluster.load_state().extra.get("pools", {}))

    def pools(self) -> list[Pool]:
        port = self.cluster.load_state().pooler_port
        return [Pool(name, p["database"], p.get("user"), p["mode"], p["size"], "127.0.0.1", port)
                for name, p in sorted(self._pools_state().items())]

    def pool_add_plan(self, name: str, database: str | None, user: str | None, mode: str,
                      size: int, *, offline: bool = False) -> Plan:
        check_pool(name, mode, size)
        state = self.cluster.load_state()
        if not state.has_pooler:
            raise ClusterOpError("the local cluster has no PgBouncer; start it: "
                                 "studyhub local up --pooler")
        pools = self._pools_state()
        if name in pools:
            raise ClusterOpError(f"a pool named {name!r} exists (cluster pool list)")
        if user not in (None, APP_ROLE, OPS_ROLE):
            raise ClusterOpError(
                f"unknown pool user {user!r}; locally one of {APP_ROLE}, {OPS_ROLE} "
                f"(or none: clients connect as themselves)"
            )
        database = database or APP_DATABASE
        self._require_primary("adding a pool")
        with self._ops() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (database,)).fetchone():
                raise ClusterOpError(f"no database named {database!r} on the local primary")
            max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])
            reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
        limit = max_conn - reserved
        used = sum(p["size"] for p in pools.values())
        if used + size > limit:
            raise ClusterOpError(
                f"pools would hold {used + size} server connections; the primary allows "
                f"{limit} (max_connections {max_conn} - {reserved} reserved), {used} already pooled"
            )
        return Plan("local", "pool add", "local",
                    [f"PgBouncer [databases] entry {name} → database {database}"
                     f"{' as ' + user if user else ''}, {mode} mode, {size} server connections",
                     f"reload PgBouncer (port {state.pooler_port}); clients connect with "
                     f"dbname={name}"],
                    params={"name": name, "database": database, "user": user, "mode": mode,
                            "size": size})

    def pool_add(self, plan: Plan) -> Pool:
        p = plan.params
        state = self.cluster.load_state()
        state.extra.setdefault("pools", {})[p["name"]] = {
            k: p[k] for k in ("database", "user", "mode", "size")}
        self.cluster.save_state(state)
        self.cluster.reload_pooler()
        return next(x for x in self.pools() if x.name == p["name"])

    def pool_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        if name not in self._pools_state():
            known = ", ".join(sorted(self._pools_state())) or "none"
            raise ClusterOpError(f"no pool named {name!r} (pools: {known})")
        return Plan("local", "pool remove", "local",
                    [f"remove PgBouncer entry {name} and reload; its clients are disconnected"],
                    params={"name": name})

    def pool_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        state = self.cluster.load_state()
        state.extra.get("pools", {}).pop(plan.params["name"], None)
        self.cluster.save_state(state)
        self.cluster.reload_pooler()
        return ChangeResult("local", "pool remove", "local", plan.params["name"], "removed",
                            round(time.monotonic() - started, 3))

    # ---------------------------------------------------------------------- info
    def info(self) -> ClusterInfo:
        st = self.cluster.status()
        nodes = [Node("primary", "primary", "127.0.0.1", st.primary.port,
                      "running" if st.primary.running else "stopped", st.primary.detail)]
        if st.replica:
            nodes.append(Node("replica", "replica", "127.0.0.1", st.replica.port,
                              "running" if st.replica.running else "stopped"))
        if st.pooler:
            nodes.append(Node("pooler", "pgbouncer", "127.0.0.1", st.pooler.port,
                              "running" if st.pooler.running else "stopped",
                              "transaction pooling"))
        notes: list[str] = []
        streaming = []
        if st.primary.running:
            streaming, problem = streaming_clients(self.profile)
            if problem:
                notes.append(problem)
        backups = self.backups()
        if backups.wal_archive and backups.wal_archive.archiver_failed_count:
            notes.append(f"WAL archiving failed {backups.wal_archive.archiver_failed_count} "
                         f"time(s); last failure {backups.wal_archive.last_failed_wal}")
        size = None
        if st.primary.running:
            try:
                with connect(self.profile, "ops", application_name="studyhub cluster info") as conn:
                    size = "shared_buffers {}, max_connections {}".format(
                        *conn.execute("SELECT current_setting('shared_buffers'), "
                                      "current_setting('max_connections')").fetchone())
            except ConnectError as exc:
                notes.append(str(exc))
        return ClusterInfo(
            provider="local",
            name="local",
            id=None,
            status="running" if st.primary.running else "stopped",
            version=st.server_version,
            size=size,
            num_nodes=1,
            region=None,
            nodes=nodes,
            replicas=self.replicas(),
            pools=self.pools(),
            streaming=streaming,
            maintenance_window=None,
            maintenance_pending=None,
            latest_backup_at=backups.backups[0].finished_at if backups.backups else None,
            backups_count=len(backups.backups),
            window=backups.window,
            forks=self.forks(),
            notes=notes,
        )
