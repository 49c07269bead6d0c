"""``studyhub cluster`` on the local cluster: base backups, the WAL archive, point-in-time forks
(restored, replayed to the exact moment, verified), the replica and PgBouncer pools."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from studyhub.errors import RefusedError
from studyhub.local import LocalCluster
from studyhub.ops import cluster as cluster_ops
from tests.conftest import connect_as, make_home


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _subjects(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT code, name FROM subjects").fetchall())


def test_fork_holds_exactly_the_rows_of_that_moment(cli, cluster: LocalCluster, migrated):
    """The issue's proof: write rows, note the time, write and delete more, fork at that time →
    the fork holds exactly the rows of that moment; the original is untouched."""
    assert cli("cluster", "basebackup").exit_code == 0
    tag = uuid.uuid4().hex[:8]
    a, b, c = (f"{x}-{tag}" for x in "abc")
    name = f"proof-{tag}"
    with connect_as(migrated) as conn:
        conn.execute("INSERT INTO subjects (code, name) VALUES (%s, %s), (%s, %s)",
                      (a, f"Alpha {tag}", b, f"Beta {tag}"))
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        expected = _subjects(conn)  # every subject as of `at`
        expected_latest = conn.execute("SELECT max(created_at) FROM subjects").fetchone()[0]
        time.sleep(0.05)
        conn.execute("INSERT INTO subjects (code, name) VALUES (%s, %s)", (c, f"Gamma {tag}"))
        conn.execute("DELETE FROM subjects WHERE code = %s", (a,))
        conn.execute("UPDATE subjects SET name = %s WHERE code = %s", (f"Beta renamed {tag}", b))
        original_after = _subjects(conn)
    try:
        res = cli("cluster", "fork", "--at", at.isoformat(), "--name", name, "--yes", "--json")
        out = _json(res)
        fork = out["result"]["fork"]
        assert fork["status"] == "running" and fork["port"] != migrated.port
        assert "password" not in fork["url"] and "passfile=" in fork["url"]
        with psycopg.connect(fork["url"], autocommit=True) as fconn:
            assert _subjects(fconn) == expected  # exactly the rows of that moment
            assert fconn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert fconn.execute("SHOW archive_mode").fetchone()[0] == "off"
        with connect_as(migrated) as conn:
            assert _subjects(conn) == original_after  # the original is untouched
        assert a not in original_after and c in original_after
        # The verification the operator sees matches that moment.
        checks = {t["table"]: t for t in out["result"]["verification"]["tables"]}
        assert checks["subjects"]["rows"] == len(expected)
        assert datetime.fromisoformat(checks["subjects"]["latest_at"]) == expected_latest
        recovered_to = datetime.fromisoformat(out["result"]["recovered_to"])
        first_left_out = datetime.fromisoformat(out["result"]["first_excluded_at"])
        assert recovered_to <= at < first_left_out
        # The fork never archives into the primary's archive (it is on a new timeline).
        assert not [p for p in cluster.wal_archive_dir.iterdir() if p.name.startswith("00000002")]
        listed = _json(cli("cluster", "forks", "list", "--json"))
        assert [f["name"] for f in listed if f["name"] == name] == [name]
        assert _json(cli("cluster", "forks", "stop", name, "--json"))["status"] == "stopped"
        restarted = _json(cli("cluster", "forks", "start", name, "--json"))
        assert restarted["status"] == "running"
        audited = [json.loads(line) for line in cluster.audit_log.read_text().splitlines()[-2:]]
        assert [(a["action"], a["name"]) for a in audited] == [
            ("cluster.forks.stop", name), ("cluster.forks.start", name)]
        with psycopg.connect(restarted["url"], autocommit=True) as fconn:
            assert _subjects(fconn) == expected  # a restarted fork keeps its point in time
    finally:
        res = cli("cluster", "forks", "remove", name, "--yes")
    assert res.exit_code == 0, res.stderr
    assert not (cluster.forks_dir / name).exists()
    assert json.loads(cluster.audit_log.read_text().splitlines()[-1])["action"] == \
        "cluster.fork.remove"


def test_fork_outside_the_window_is_refused_with_the_window(cli, cluster, migrated):
    assert cli("cluster", "basebackup").exit_code == 0
    backups = _json(cli("cluster", "backups", "--json"))
    earliest = datetime.fromisoformat(backups["window"]["earliest"])
    too_early = (earliest - timedelta(minutes=5)).isoformat()
    res = cli("cluster", "fork", "--at", too_early, "--name", "too-early", "--yes")
    assert res.exit_code == 1
    assert "outside the recoverable window" in res.stderr
    assert earliest.strftime("%Y-%m-%dT%H:%M:%S") in res.stderr
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    res = cli("cluster", "fork", "--at", future, "--name", "too-late", "--yes")
    assert res.exit_code == 1 and "in the future" in res.stderr
    assert not (cluster.forks_dir / "too-early").exists()
    assert not (cluster.forks_dir / "too-late").exists()


@pytest.mark.parametrize("args, message", [
    (["--at", "2026-05-01 14:03", "--name", "no-zone"], "has no time zone"),
    (["--at", "yesterday", "--name", "bad-time"], "cannot read the time"),
    (["--at", "now", "--name", "Bad_Name"], "invalid fork name"),
])
def test_fork_bad_input_is_one_clear_line(cli, cluster, args, message):
    res = cli("cluster", "fork", *args, "--yes")
    assert res.exit_code == 1
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_fork_dry_run_changes_nothing(cli, cluster, migrated):
    assert cli("cluster", "basebackup").exit_code == 0
    res = cli("cluster", "fork", "--at", "now", "--name", "dry-fork", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "pg_verifybackup" in res.stdout and "dry run: nothing was changed" in res.stdout
    assert not (cluster.forks_dir / "dry-fork").exists()


def test_backups_list_base_backups_archive_and_window(cli, cluster, migrated):
    out = _json(cli("cluster", "basebackup", "--json"))
    label = out["result"]["label"]
    backups = _json(cli("cluster", "backups", "--json"))
    assert backups["provider"] == "local"
    assert label in [b["label"] for b in backups["backups"]]
    newest = backups["backups"][0]
    assert newest["kind"] == "base" and newest["size_bytes"] > 0
    assert newest["created_at"] <= newest["finished_at"]
    archive = backups["wal_archive"]
    assert archive["segments"] >= 1 and archive["gaps"] == []
    assert archive["archiver_failed_count"] == 0
    assert backups["window"]["earliest"] is not None


def test_basebackup_keep_deletes_older_backups_and_their_wal(cli, cluster, migrated):
    for _ in range(2):
        assert cli("cluster", "basebackup").exit_code == 0
    before = {p.name for p in cluster.basebackups_dir.iterdir()}
    res = cli("cluster", "basebackup", "--keep", "1")
    assert res.exit_code == 1 and "needs confirmation" in res.stderr
    assert {p.name for p in cluster.basebackups_dir.iterdir()} == before  # nothing changed
    with connect_as(migrated, "admin") as conn:  # fill the archive past the backups
        conn.execute("SELECT pg_switch_wal()")
    out = _json(cli("cluster", "basebackup", "--keep", "1", "--yes", "--json"))
    kept = out["result"]["label"]
    assert sorted(out["plan"]["params"]["delete"]) == sorted(before)
    assert [p.name for p in cluster.basebackups_dir.iterdir()] == [kept]
    meta = json.loads((cluster.basebackups_dir / kept / "backup.json").read_text())
    segments = sorted(p.name for p in cluster.wal_archive_dir.iterdir() if len(p.name) == 24)
    assert segments[0] >= meta["start_segment"]


def test_resize_is_not_applicable_locally(cli, cluster):
    res = cli("cluster", "resize", "--size", "db-s-2vcpu-4gb", "--yes")
    assert res.exit_code == 1 and "does not apply to the local cluster" in res.stderr


def test_a_failed_fork_stop_is_audited(cli, cluster):
    res = cli("cluster", "forks", "stop", "no-such-fork")
    assert res.exit_code == 1 and "no fork named 'no-such-fork'" in res.stderr
    audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
    assert (audit["action"], audit["name"], audit["outcome"]) == \
        ("cluster.forks.stop", "no-such-fork", "failed")
    assert audit["error"].startswith("no fork named 'no-such-fork'")


def test_a_change_asks_the_profile_first_whoever_calls_it(cluster, migrated):
    """apply_plan (the one way to carry out a planned change, for the CLI and any other caller)
    refuses a protected profile that was not named explicitly, before doing anything."""
    production = replace(migrated, name="production", protected=True, explicit=False)
    backend = cluster_ops.LocalBackend(production, cluster)
    plan = backend.basebackup_plan()
    before = [b.label for b in backend.base_backups()]
    with pytest.raises(RefusedError, match="refusing to cluster basebackup on production"):
        cluster_ops.apply_plan(backend, plan)
    assert [b.label for b in backend.base_backups()] == before
    with pytest.raises(RefusedError, match="profile local is marked read-only"):
        cluster_ops.fork_stop(replace(migrated, read_only=True), "any-fork")


def test_info_shows_nodes_replica_lag_pools_and_backups(cli, migrated, with_replica, with_pooler):
    out = _json(cli("cluster", "info", "--json"))
    assert out["provider"] == "local" and out["status"] == "running"
    assert {n["role"] for n in out["nodes"]} == {"primary", "replica", "pooler"}
    [replica] = out["replicas"]
    assert replica["name"] == "replica" and replica["status"] == "streaming"
    assert isinstance(replica["lag_bytes"], int)
    assert "studyhub_replica" in [s["application_name"] for s in out["streaming"]]
    assert _json(cli("cluster", "replica", "list", "--json"))[0]["port"] == \
        with_replica.load_state().replica_port


def test_pool_add_list_remove_maps_to_pgbouncer(cli, migrated, with_pooler: LocalCluster):
    prof = with_pooler.profile()
    res = cli("cluster", "pool", "add", "--name", "reports", "--size", "4", "--mode", "session",
              "--dry-run")
    assert res.exit_code == 0 and "reports" not in _pgbouncer_databases(with_pooler)
    res = cli("cluster", "pool", "add", "--name", "reports", "--size", "4", "--mode", "session",
              "--yes")
    assert res.exit_code == 0, res.stderr
    dbs = _pgbouncer_databases(with_pooler)
    assert (dbs["reports"]["pool_size"], dbs["reports"]["pool_mode"],
            dbs["reports"]["database"]) == (4, "session", "studyhub")
    ep = prof.endpoint("pooler")
    with psycopg.connect(**{**ep.conninfo(), "dbname": "reports"}, prepare_threshold=None,
                         autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "studyhub"
    assert [p["name"] for p in _json(cli("cluster", "pool", "list", "--json"))] == ["reports"]
    res = cli("cluster", "pool", "add", "--name", "reports", "--size", "4", "--yes")
    assert res.exit_code == 1 and "exists" in res.stderr
    res = cli("cluster", "pool", "add", "--name", "huge", "--size", "500", "--yes")
    assert res.exit_code == 1 and "server connections" in res.stderr
    res = cli("cluster", "pool", "remove", "reports", "--yes")
    assert res.exit_code == 0, res.stderr
    assert "reports" not in _pgbouncer_databases(with_pooler)
    assert _json(cli("cluster", "pool", "list", "--json")) == []


def _pgbouncer_databases(cluster: LocalCluster) -> dict[str, dict]:
    with cluster.pooler_admin_connect() as conn:
        cur = conn.execute("SHOW DATABASES")
        cols = [d.name for d in cur.description]
        return {row[0]: dict(zip(cols, row)) for row in cur.fetchall()}


@pytest.mark.slow
def test_replica_add_and_remove(cli, monkeypatch):
    home = make_home("studyhub-replica-")
    own = LocalCluster(home)
    try:
        own.up()
        monkeypatch.setenv("STUDYHUB_HOME", str(home))
        res = cli("cluster", "replica", "add", "--name", "second")
        assert res.exit_code == 1 and "invalid local replica name 'second'" in res.stderr
        res = cli("cluster", "replica", "add", "--yes")
        assert res.exit_code == 0, res.stderr
        assert own.status().replica_streaming
        res = cli("cluster", "replica", "remove", "replica")
        assert res.exit_code == 1 and "needs confirmation" in res.stderr
        assert own.status().replica.running
        res = cli("cluster", "replica", "remove", "replica", "--yes")
        assert res.exit_code == 0, res.stderr
        assert not own.replica_dir.exists() and own.status().replica is None
        with own.admin_connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    finally:
        own.destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_archive_command_never_overwrites_an_archived_segment(cluster, tmp_path_factory):
    """Run the primary's own archive_command: a second identical copy counts as archived, a
    different file under an archived name fails and leaves the archived one as it was."""
    from studyhub.local import proc

    with cluster.admin_connect() as conn:
        command = conn.execute("SHOW archive_command").fetchone()[0]
    src_dir = make_home("studyhub-archive-src-")
    name = f"TEST-{uuid.uuid4().hex}"  # not a segment name: ignored by the WAL listing
    archived = cluster.wal_archive_dir / name
    try:
        src = src_dir / "segment"
        src.write_bytes(b"first version")
        src.chmod(0o644)

        def archive() -> int:
            cmd = command.replace("%p", str(src)).replace("%f", name)
            return proc.run_server_cmd(["sh", "-c", cmd], check=False).returncode

        assert archive() == 0 and archived.read_bytes() == b"first version"
        assert archive() == 0  # the same file again (as after a crash): success
        src.write_bytes(b"something else")
        assert archive() != 0  # never overwritten
        assert archived.read_bytes() == b"first version"
        assert not list(cluster.wal_archive_dir.glob(f"{name}.part"))
    finally:
        archived.unlink(missing_ok=True)
        shutil.rmtree(src_dir, ignore_errors=True)


def test_a_restore_that_does_not_match_its_manifest_is_refused_and_cleaned_up(cli, cluster,
                                                                              migrated):
    out = _json(cli("cluster", "basebackup", "--json"))
    backup = cluster.basebackups_dir / out["result"]["label"]
    manifest = backup / "backup_manifest"
    text = manifest.read_text()
    size = re.search(r'"Size": (\d+)', text)
    manifest.write_text(text.replace(size[0], f'"Size": {int(size[1]) + 1}', 1))
    try:
        res = cli("cluster", "fork", "--at", "now", "--name", "corrupt-fork", "--yes")
        assert res.exit_code == 1 and "pg_verifybackup failed" in res.stderr
        assert not (cluster.forks_dir / "corrupt-fork").exists()
        assert not (cluster.forks_dir / "corrupt-fork.json").exists()
    finally:
        shutil.rmtree(backup)


def _person_rows(conn: psycopg.Connection, person) -> dict[str, int]:
    """Rows of one person (tests.privacy_data.add_person) per table."""
    counts = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE student_id = %s",
                              (person.student_id,)).fetchone()[0]
              for t in ("student_subjects", "notes", "flashcards", "flashcard_reviews",
                        "revision_sessions", "ai_interactions")}
    counts["students"] = conn.execute("SELECT count(*) FROM students WHERE id = %s",
                                      (person.student_id,)).fetchone()[0]
    counts["users"] = conn.execute("SELECT count(*) FROM users WHERE id = %s",
                                   (person.user_id,)).fetchone()[0]
    return counts


def test_fork_erases_again_people_erased_after_its_point_in_time(cli, cluster, migrated):
    """GDPR art. 17: a fork is the database at time T, so a person erased after T is back in
    it unless the erasure ledger is re-applied. Default: re-applied (reported); with
    --no-reapply-erasures the fork holds them (said loudly) until `privacy reapply-erasures
    --fork` erases them there."""
    from studyhub.ops import privacy
    from studyhub.ops.privacy import PseudonymKey
    from tests.privacy_data import add_person

    key = PseudonymKey(b"fork-test-key-0123456789abcdef0123456789", "test")
    tag = uuid.uuid4().hex[:8]
    n = 900_000 + int(tag[:5], 16)
    assert cli("cluster", "basebackup").exit_code == 0
    with connect_as(migrated) as conn:
        before = add_person(conn, n)  # erased before T: absent from the fork anyway
        after = add_person(conn, n + 1)  # erased after T: present in the fork at T
    with connect_as(migrated, autocommit=False) as conn:
        privacy.erase_person(conn, key, student_id=before.student_id)
    with connect_as(migrated) as conn:
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.05)
    with connect_as(migrated, autocommit=False) as conn:
        privacy.erase_person(conn, key, student_id=after.student_id)
    skipped, reapplied = f"noerase-{tag}", f"erase-{tag}"
    try:
        # Without the ledger: the person erased after T is back in the fork.
        res = cli("cluster", "fork", "--at", at.isoformat(), "--name", skipped, "--yes",
                  "--no-reapply-erasures", "--json")
        out = _json(res)
        assert out["result"]["erasures"]["status"] == "skipped"
        assert "NOT re-applying the erasure ledger" in " ".join(out["plan"]["summary"])
        assert "erasure ledger NOT re-applied" in res.stderr
        with psycopg.connect(out["result"]["fork"]["url"], autocommit=True) as fconn:
            assert all(_person_rows(fconn, after).values())  # present in every table
            assert not any(_person_rows(fconn, before).values())
        # ... until the ledger is re-applied to that fork on demand.
        res = cli("privacy", "reapply-erasures", "--fork", skipped, "--yes", "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["people_present"] == 1
        with psycopg.connect(out["result"]["fork"]["url"], autocommit=True) as fconn:
            assert not any(_person_rows(fconn, after).values())

        # Default: the fork erases them again itself, and says so.
        out = _json(cli("cluster", "fork", "--at", at.isoformat(), "--name", reapplied, "--yes",
                        "--json"))
        erasures = out["result"]["erasures"]
        assert erasures["status"] == "reapplied"
        assert erasures["reapplied"] == 1 and erasures["already_absent"] >= 1
        assert erasures["rows_deleted"] == 25  # add_person(size=2): 1+1+2+2+1+4+12+2 rows
        assert erasures["sources"][f"live database {migrated.database}"] >= 2
        with psycopg.connect(out["result"]["fork"]["url"], autocommit=True) as fconn:
            assert not any(_person_rows(fconn, after).values())
            assert not any(_person_rows(fconn, before).values())
            ledger = {r[0] for r in fconn.execute("SELECT user_id FROM ops.erasure_ledger")}
            assert {before.user_id, after.user_id} <= ledger  # the fork's own ledger knows
        audit = json.loads(cluster.audit_log.read_text().splitlines()[-1])
        assert (audit["action"], audit["erasures"], audit["erasures_reapplied"]) == \
            ("cluster.fork", "reapplied", 1)
        assert after.email not in cluster.audit_log.read_text()
    finally:
        for name in (skipped, reapplied):
            cli("cluster", "forks", "remove", name, "--yes")

