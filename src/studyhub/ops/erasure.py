"""Erasure requests end to end, above ``ops.backup`` and ``ops.cluster`` (which re-apply the
ledger of ``ops.privacy`` themselves): ``run_erase`` — profile → rule check → connection →
``privacy.erase_person`` → the places outside the database that may still hold the person
(``places_not_cleaned``: the server log, the WAL, backups and forks made before the erasure,
exports already written) → one audit line, however it ends; ``run_reapply`` — the ledger
erased again in a restored database or a point-in-time fork.

Only cheap facts are gathered for the places: file listings and small metadata files, the
audit log, the server's log settings over the erasure's own connection.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg

from studyhub.audit import audit_path, audited, read_audit
from studyhub.connect import connect
from studyhub.errors import StudyhubError
from studyhub.local import SEGMENT_RE, LocalHome
from studyhub.ops import backup, cluster
from studyhub.ops.health import LOG_VALUE_SETTINGS, log_value_leaks
from studyhub.ops.privacy import (
    DEFAULT_LOCK_TIMEOUT,
    ErasureResult,
    PlaceNotCleaned,
    PseudonymKey,
    ReapplyResult,
    check_person_args,
    database_name,
    erase_person,
    erasure_ledger,
    merge_ledgers,
    read_ledger_file,
    reapply_erasures,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

DO_RETENTION_DAYS = 7  # DigitalOcean: daily backups and point-in-time recovery, seven days


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="seconds")


def _parse(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _log_settings_verdict(conn: psycopg.Connection) -> str:
    """What the server log may hold, given its current settings (health.log_value_leaks)."""
    with conn.transaction():
        rows = conn.execute(load("get_log_value_settings"),
                            {"names": list(LOG_VALUE_SETTINGS)}).fetchall()
    leaks = log_value_leaks({name: setting for name, setting, _, _ in rows})
    if not leaks:
        return ("lines written before its settings kept data values out: the email (a "
                "registration's unique violation), ids, statement texts; since then error "
                "texts only")
    return ("data values: its settings copy them into it (" + ", ".join(n for n, _ in leaks)
            + "; see studyhub diag doctor --check server_log_values)")


def _server_log(profile: Profile, verdict: str) -> PlaceNotCleaned:
    if profile.is_local:
        logs = LocalHome().logs_dir
        files = sorted(p.name for p in logs.glob("*.log")) if logs.is_dir() else []
        return PlaceNotCleaned(
            "server-log", str(logs), verdict,
            "until deleted: written by pg_ctl -l, appended to, never rotated; `studyhub local "
            "destroy` removes them",
            "search them for the person's email and ids (grep) and delete the lines or files "
            "that hold them", files)
    if profile.do_cluster_id:
        return PlaceNotCleaned(
            "server-log", "DigitalOcean's PostgreSQL logs, and every log sink forwarding them "
            "(rsyslog, OpenSearch, Datadog)", verdict,
            "DigitalOcean's own retention (not published); each log sink's (OpenSearch: "
            "index_days_max)",
            "delete the person's lines where the sinks allow it; the provider's copy ages out")
    return PlaceNotCleaned(
        "server-log", f"the server log of {profile.host}:{profile.port}", verdict,
        "its operator's log retention",
        "ask its operator to remove the person's lines")


def _wal_and_base_backups(profile: Profile, erased_at: datetime) -> list[PlaceNotCleaned]:
    if profile.is_local:
        home = LocalHome()
        archive = home.wal_archive_dir
        try:
            segments = sorted(p.name for p in archive.iterdir() if SEGMENT_RE.fullmatch(p.name))
        except OSError:
            segments = []
        bases = [b for b in home.read_base_backups()
                 if datetime.fromisoformat(b["started_at"]) < erased_at]
        oldest = bases[0] if bases else None
        window = (f"a fork can go back to {_iso(datetime.fromisoformat(oldest['finished_at']))} "
                  f"(end of base backup {oldest['label']}), before the erasure"
                  if oldest else "no base backup: no fork can be made before the erasure")
        places = [PlaceNotCleaned(
            "wal", str(archive),
            "the person's rows as written, changed and deleted (WAL records), in archived "
            f"segments and the servers' pg_wal; {window}",
            "until `studyhub cluster basebackup --keep N` removes the segments older than the "
            "oldest base backup kept (pg_wal recycles its own after checkpoints)",
            "a fork is erased again from the ledger when it is made; to drop the archive's "
            "copy, take a base backup after the erasure and keep only it: "
            "studyhub cluster basebackup --keep 1",
            [f"{len(segments)} archived segments" + (f", {segments[0]} … {segments[-1]}"
                                                     if segments else "")])]
        if bases:
            places.append(PlaceNotCleaned(
                "base-backup", str(home.basebackups_dir),
                "a full copy of the cluster as it was, the person included",
                "until pruned: studyhub cluster basebackup --keep N",
                "forks restored from them are erased again from the ledger; prune them once a "
                "newer base backup exists", [b["label"] for b in bases]))
        forks = [f["name"] for f in home.read_fork_metas()
                 if (created := _parse(f.get("created_at"))) is None or created < erased_at]
        if forks:
            places.append(PlaceNotCleaned(
                "fork", str(home.forks_dir),
                "the person as of the fork's point in time (forks made before this erasure "
                "were not erased again)", "until removed: studyhub cluster forks remove NAME",
                "erase them there too: studyhub privacy reapply-erasures --fork NAME", forks))
        return places
    if profile.do_cluster_id:
        until = _iso(erased_at + timedelta(days=DO_RETENTION_DAYS))
        return [
            PlaceNotCleaned(
                "wal", "DigitalOcean's point-in-time recovery (WAL) and daily backups",
                "the person's rows: a fork or restore at a time before the erasure brings them "
                "back", f"{DO_RETENTION_DAYS} days, i.e. until about {until}",
                "`studyhub cluster fork` erases them again from the ledger; a restore made "
                "outside studyhub needs: studyhub privacy reapply-erasures"),
            PlaceNotCleaned(
                "fork", "forks of the cluster made before the erasure",
                "the person as of each fork's point in time",
                "until removed (studyhub cluster forks list / remove NAME)",
                "for each: studyhub privacy reapply-erasures --fork NAME"),
        ]
    return [PlaceNotCleaned(
        "wal", f"the WAL archive and physical backups of {profile.host}:{profile.port}",
        "the person's rows as of any time before the erasure", "its operator's retention",
        "after any restore or fork: studyhub privacy reapply-erasures")]


def _backup_sets(profile: Profile, database: str, erased_at: datetime) -> list[PlaceNotCleaned]:
    root = backup.default_backup_dir()
    names = []
    for s in backup.list_sets(root):
        created = _parse(s.created_at)
        if s.status != "complete":
            names.append(f"{s.name} ({s.status})")
        elif s.profile == profile.name and s.database == database and created is not None \
                and created < erased_at:
            names.append(s.name)
    if not names:
        return []
    return [PlaceNotCleaned(
        "backup-set", str(root), "the person's rows (sets of this database made before the "
        "erasure; incomplete leftovers may hold anyone)",
        "until `studyhub backup prune` removes them (the retention policy)",
        "`studyhub backup restore` erases them again from the erasure ledger; leftovers: "
        "studyhub backup prune", names)]


def _exports(pseudonym: str, erased_at: datetime) -> list[PlaceNotCleaned]:
    made = []
    for line in read_audit():
        when = _parse(line.get("time"))
        if when is None or when >= erased_at or line.get("outcome", "ok") != "ok":
            continue  # after the erasure, or a command that failed (it wrote nothing)
        if line.get("action") == "privacy.export" and line.get("person") == pseudonym:
            made.append(f"privacy export {line['time']} by {line.get('operator', '?')}")
        elif line.get("action") == "privacy.anonymize":
            made.append(f"privacy anonymize --dataset {line.get('dataset')} {line['time']}")
    if not made:
        return []
    return [PlaceNotCleaned(
        "export", f"files written by these commands (the audit log {audit_path()} records when "
        "and by whom, not where)",
        "the person's data (privacy export: all of it; privacy anonymize: their rows under a "
        "keyed pseudonym)", "until deleted", "find and delete those files", made)]


def places_not_cleaned(conn: psycopg.Connection, profile: Profile, *, database: str,
                       pseudonym: str, erased_at: datetime) -> list[PlaceNotCleaned]:
    """The places outside ``profile``'s database that may still hold the person erased at
    ``erased_at`` (their ledger pseudonym ``pseudonym``). ``conn``: any role of that database,
    idle (the log settings are read in a transaction of their own)."""
    places = [_server_log(profile, _log_settings_verdict(conn))]
    places += _wal_and_base_backups(profile, erased_at)
    places += _backup_sets(profile, database, erased_at)
    places += _exports(pseudonym, erased_at)
    return places


def run_erase(profile: Profile, key: PseudonymKey, *, student_id: str | UUID | None = None,
              email: str | None = None, database: str | None = None, dry_run: bool = False,
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> ErasureResult:
    """``studyhub privacy erase`` on ``profile``. A dry run (the plan) counts the rows and
    changes nothing. A real run checks that the profile allows changes, erases
    (``erase_person``, naming what it could not clean) and writes the audit line
    ``privacy.erase``, naming the person by keyed pseudonym — also when it fails, the error
    then by type only (a message may name the person)."""
    check_person_args(student_id, email)
    if dry_run:
        with connect(profile, "app", database=database,
                     application_name="studyhub privacy erase") as conn:
            return erase_person(conn, key, student_id=student_id, email=email, dry_run=True,
                                lock_timeout=lock_timeout)
    profile.require_changes_allowed("erase a person")
    with audited("privacy.erase", profile.name, error_text=False) as line:
        with connect(profile, "app", database=database,
                     application_name="studyhub privacy erase") as conn:
            line["database"] = database_name(conn)
            result = erase_person(conn, key, student_id=student_id, email=email,
                                  lock_timeout=lock_timeout)
            assert result.erased_at is not None
            result.not_cleaned = places_not_cleaned(conn, profile, database=result.database,
                                                    pseudonym=result.pseudonym,
                                                    erased_at=result.erased_at)
        line.update(database=result.database, person=result.pseudonym,
                    rows_by_table=result.rows_by_table, rows_total=result.rows_total,
                    attempts=result.attempts, duration_s=result.duration_s,
                    not_cleaned=[p.kind for p in result.not_cleaned])
    return result


def run_reapply(profile: Profile, *, ledger_file: Path | None = None, fork: str | None = None,
                database: str | None = None, dry_run: bool = False,
                lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> ReapplyResult:
    """``studyhub privacy reapply-erasures``: erase again, in ``database`` (e.g. a restored
    backup) or in the running point-in-time fork ``fork`` of the profile's cluster, everyone
    in the ledger — ``ledger_file``, else the ledger of the profile's own database, merged with
    the target's own — who is present there. A dry run (the plan) changes nothing. A real run
    checks that the profile allows changes and writes the audit line
    ``privacy.reapply_erasures`` (also when it fails)."""
    if fork and database:
        raise StudyhubError("give either --fork or --database, not both")
    if not dry_run:
        profile.require_changes_allowed("re-apply erasures")
    audit = nullcontext({}) if dry_run else audited("privacy.reapply_erasures", profile.name,
                                                     fork=fork)
    with audit as line:
        target = cluster.fork_target(profile, fork) if fork else profile
        if ledger_file:
            source = read_ledger_file(ledger_file)
        else:
            with connect(profile, "app", application_name="studyhub privacy") as conn:
                source = erasure_ledger(conn)
        with connect(target, "app", database=database,
                     application_name="studyhub privacy reapply") as conn:
            line["database"] = database_name(conn)
            entries = merge_ledgers(source, erasure_ledger(conn))
            result = reapply_erasures(conn, entries, dry_run=dry_run, lock_timeout=lock_timeout)
        line.update(database=result.database,
                    people=[p.pseudonym for p in result.people if p.present],
                    rows_total=result.rows_total, ledger_recorded=result.ledger_recorded,
                    duration_s=result.duration_s)
    return result
