"""Point-in-time forks of the local cluster (the second layer of the local backend of
``studyhub cluster``): a base backup restored into ``$STUDYHUB_HOME/forks/<name>/``, checked
against its manifest (``pg_verifybackup``), replayed from the archive to
``recovery_target_time`` and promoted, on a new port, with archiving off (a fork never writes
into the primary's archive); then verified and erased again from the erasure ledger.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from studyhub.atomic_file import write_atomically
from studyhub.local import APP_DATABASE, APP_ROLE, conf_quote, pick_free_port, port_is_free, proc
from studyhub.ops.cluster.common import (
    erasure_plan_line,
    fork_profile,
    reapply_erasures_on_fork,
    verify_profile,
)
from studyhub.ops.cluster.local_archive import LocalArchive, _parse_pg_time
from studyhub.ops.cluster.types import (
    ChangeResult,
    ClusterOpError,
    Fork,
    ForkErasures,
    ForkResult,
    Plan,
    Progress,
    RecoveryWindow,
    _noop,
    check_name,
    iso,
    refuse_outside,
)
from studyhub.ops.queries import load
from studyhub.profiles import Endpoint, Profile

_LOG_STOP_RE = re.compile(r"recovery stopping before (?:commit|abort) of transaction \d+, "
                          r"time (\S+ \S+)")
_LOG_LAST_RE = re.compile(r"last completed transaction was at log time (\S+ \S+)")


class LocalForks(LocalArchive):
    """Base backups and WAL archive (``LocalArchive``), and the forks made from them."""

    def _fork_profile(self, port: int) -> Profile:
        return fork_profile(self.profile, f"fork:{port}", None, port)

    def _url(self, port: int) -> str:
        return Endpoint("127.0.0.1", port, APP_DATABASE, APP_ROLE, "disable",
                        passfile=self.cluster.passfile).url()


    # -------------------------------------------------------------------- forks
    def _fork_meta_path(self, name: str) -> Path:
        return self.cluster.forks_dir / f"{name}.json"

    def _read_fork_meta(self, name: str) -> dict[str, Any] | None:
        path = self._fork_meta_path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def _write_fork_meta(self, meta: dict[str, Any]) -> None:
        text = json.dumps(meta, indent=2) + "\n"
        write_atomically(self._fork_meta_path(meta["name"]), lambda f: f.write(text.encode()),
                         mode=0o644, overwrite=True)

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
        return self.cluster.read_fork_metas()

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

    # ------------------------------------------------------------ promote a fork
    def fork_promote_plan(self, name: str, *, offline: bool = False) -> Plan:
        """The fork takes over the primary's role: same port, archiving on; the old primary is
        stopped and kept renamed; the replica is re-seeded from the new primary."""
        c = self.cluster
        meta = self._require_fork(name)
        fork = self._fork(meta)
        if meta["status"] != "promoted":
            raise ClusterOpError(f"fork {name} is {fork.status}: it never finished recovery, so "
                                 f"it cannot become the primary (remove it and fork again)")
        if fork.status != "running":
            raise ClusterOpError(f"fork {name} is {fork.status}; start it first "
                                 f"(studyhub cluster forks start {name})")
        self._require_primary("promoting a fork (its erasure ledger is read first)")
        state = c.load_state()
        replaced = "primary.replaced-" + self._now().strftime("%Y%m%dT%H%M%SZ")
        summary = [
            f"erase again in fork {name} everyone in the primary's erasure ledger (people "
            f"erased since the fork was made)",
            "stop the replica and the primary" if state.has_replica else "stop the primary",
            f"keep the old primary's data, stopped, as {c.home / replaced}",
            f"move fork {name} (as of {iso(fork.target_time)}) into {c.primary_dir}: it becomes "
            f"the primary on port {state.primary_port}, archiving WAL again",
        ]
        if state.has_replica:
            summary.append("re-seed the replica from the new primary (pg_basebackup through "
                           "the slot studyhub_replica) and wait until it streams")
        summary += [
            f"profile {self.profile.name} keeps its port: clients reconnect to the new primary",
            "then take a base backup (studyhub cluster basebackup): new forks start from one",
        ]
        warnings = ["clients connected to the primary are cut off; writes made to it after "
                    f"the fork's point in time are not in {name} (they stay in the old "
                    "primary's data)"]
        return Plan("local", "fork promote", "local", summary,
                    params={"name": name, "replaced": replaced,
                            "reseed_replica": state.has_replica},
                    warnings=warnings)

    def fork_promote(self, plan: Plan, *, progress: Progress = _noop,
                     **_: Any) -> ChangeResult:
        c = self.cluster
        started = time.monotonic()
        name = plan.params["name"]
        meta = self._require_fork(name)
        progress("re-applying the erasure ledger to the fork")
        erasures = reapply_erasures_on_fork(self.profile, self._fork_profile(meta["port"]), name)
        fork_dir = c.forks_dir / name
        replaced = c.home / plan.params["replaced"]
        progress("stopping the replica and the primary")
        c._stop_postgres(c.replica_dir)
        c._stop_postgres(c.primary_dir)
        c._stop_postgres(fork_dir)
        os.rename(c.primary_dir, replaced)
        try:
            os.rename(fork_dir, c.primary_dir)
        except OSError:
            os.rename(replaced, c.primary_dir)
            raise
        # The new timeline's history into the archive: a restore can follow it.
        for history in sorted((c.primary_dir / "pg_wal").glob("*.history")):
            dest = c.wal_archive_dir / history.name
            if not dest.exists():
                shutil.copy2(history, dest)
                proc.chown_to_server(dest)
        self._fork_meta_path(name).unlink(missing_ok=True)  # no longer a fork
        state = c.load_state()
        state.extra.setdefault("replaced_primaries", []).append(
            {"dir": str(replaced), "replaced_at": datetime.now(timezone.utc).isoformat(),
             "by_fork": name, "fork_target_time": meta["target_time"]})
        c.save_state(state)
        if plan.params["reseed_replica"]:
            shutil.rmtree(c.replica_dir, ignore_errors=True)  # a copy of the old primary
        try:
            progress("starting the new primary")
            c.up(progress=progress)  # its conf (the primary's port, archiving), the replica
        except Exception as exc:
            raise ClusterOpError(
                f"fork {name} was moved into {c.primary_dir} but did not come up: {exc}; the "
                f"old primary is kept in {replaced}") from None
        return ChangeResult("local", "fork promote", "local", name, "promoted",
                            round(time.monotonic() - started, 3),
                            details={"name": name, "replaced": str(replaced),
                                     "port": c.load_state().primary_port,
                                     "replica_reseeded": plan.params["reseed_replica"],
                                     "erasures_reapplied": erasures.reapplied})

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
