"""``migrate rehearse``: pending migrations applied on a real point-in-time fork of the local
cluster (restored from a base backup + the WAL archive), measured, judged, and the fork removed
in every case; on DigitalOcean (the fake TLS API of tests/fake_digitalocean.py) the failure paths
of the fork's lifecycle and --dry-run.

The migrations rehearsed are drafts (``--versions-dir``) on top of the chain, applied to a fresh
database of the session cluster (at head), so the session database is never changed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from studyhub.local import LocalCluster
from studyhub.ops import cluster as cluster_ops
from studyhub.ops import migrate
from studyhub.ops.migrate import rehearse as ops
from studyhub.ops.migrate.rehearse import measure
from studyhub.ops.seed import seed_database
from studyhub.profiles import Profile
from tests.conftest import connect_as
from tests.migration_examples import write_example
from tests.test_cluster_do import do, do_server  # noqa: F401  (fixtures)


SAFE = 'create_index_concurrently("ix_rehearse_subjects_name", "subjects", ["name"])'
# SHARE (what a plain CREATE INDEX takes) blocks the app workload's writes to notes and not its
# reads, so a write is always among the requests that wait. (ACCESS EXCLUSIVE stalls each client
# at its first request on notes, a read 2 times in 3: with both clients stalled on reads no
# write waited, and the test failed 3 times in 8 runs.)
BLOCKING = 'op.execute("LOCK TABLE notes IN SHARE MODE; SELECT pg_sleep(2)")'
BLOCKING_ACK = ('LINT_ACK = {"blocking-table-lock": "deliberately blocking: the rehearsal '
                'test must measure it"}')
FAILING = 'op.execute("UPDATE subjects SET name = name WHERE 1/0 = 1")'


@pytest.fixture(scope="module")
def based(cluster: LocalCluster, migrated: Profile) -> LocalCluster:
    """A fresh base backup to fork from: each fork then replays only the WAL written since
    (forking from an older one replays everything earlier tests wrote, tens of seconds)."""
    backend = cluster_ops.LocalBackend(migrated, cluster)
    cluster_ops.apply_plan(backend, backend.basebackup_plan())
    return cluster


@pytest.fixture
def source(based: LocalCluster, migrated: Profile, fresh_db: str, tmp_path: Path):
    """A fresh database at head with a few students' data (for the app workload) and more
    subjects, and a drafts directory on top of head."""
    migrate.upgrade(migrated, database=fresh_db)
    seed_database(migrated, students=10, database=fresh_db)
    with connect_as(migrated, database=fresh_db) as conn:
        conn.execute("INSERT INTO subjects (code, name) SELECT 's' || g, 'Subject ' || g "
                     "FROM generate_series(1, 500) g")
    return migrated, fresh_db, tmp_path / "drafts"


def _head(profile: Profile, database: str) -> list[str]:
    return migrate.current(profile, database)


def _no_fork_left(cluster: LocalCluster, name: str, profile: Profile) -> None:
    assert not (cluster.forks_dir / name).exists()
    assert not (cluster.forks_dir / f"{name}.json").exists()
    assert name not in [f.name for f in cluster_ops.backend_for(profile).forks()]


def _audit(cluster: LocalCluster, action: str) -> dict:
    return [json.loads(line) for line in cluster.audit_log.read_text().splitlines()
            if json.loads(line)["action"] == action][-1]


def _rehearse_cli(cli, database: str, drafts: Path, *args: object):
    return cli("migrate", "rehearse", "--database", database, "--versions-dir", drafts, *args)


# ------------------------------------------------------------------------------ local, real fork
def test_no_pending_migration_says_so_and_makes_no_fork(cli, based, migrated):
    before = {p.name for p in based.forks_dir.iterdir()} if based.forks_dir.exists() else set()
    res = cli("migrate", "rehearse", "--yes")
    assert res.exit_code == 0, res.stderr
    assert "nothing to rehearse" in res.stdout and "no fork is made" in res.stdout
    out = json.loads(cli("migrate", "rehearse", "--yes", "--json").stdout)
    assert out["plan"]["pending"] == [] and out["report"] is None
    after = {p.name for p in based.forks_dir.iterdir()} if based.forks_dir.exists() else set()
    assert after == before


def test_rehearsal_reports_each_statement_removes_the_fork_and_leaves_the_source(cli, source):
    profile, db, drafts = source
    safe = write_example(drafts, SAFE)
    head = _head(profile, db)
    res = _rehearse_cli(cli, db, drafts, "--yes", "--json", "--name", f"rh-{uuid.uuid4().hex[:6]}")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    report, plan = out["report"], out["plan"]
    assert plan["pending"] == [safe] and report["revisions"] == [safe]
    statements = [s["measure"]["statement"] for s in report["statements"]]
    assert any("CREATE INDEX CONCURRENTLY" in s and "ix_rehearse_subjects_name" in s
               for s in statements), statements
    assert all(s["measure"]["revision"] == safe for s in report["statements"])
    assert report["verdict"] == "pass" and report["failed"] is None
    assert report["fork_removal"] == "removed"
    _no_fork_left(source_cluster(), report["fork"], profile)
    # production untouched: the source database is still at head, without the index
    assert report["source_revisions_before"] == report["source_revisions_after"] == head
    assert _head(profile, db) == head
    with connect_as(profile, database=db) as conn:
        assert conn.execute("SELECT to_regclass('ix_rehearse_subjects_name')").fetchone()[0] \
            is None
    audit = _audit(source_cluster(), "migrate.rehearse")
    assert (audit["outcome"], audit["verdict"], audit["fork"], audit["revisions"]) == \
        ("ok", "pass", report["fork"], [safe])
    assert "CREATE INDEX" not in json.dumps(audit)  # no SQL in the audit log
    fork_audit = [json.loads(x) for x in source_cluster().audit_log.read_text().splitlines()
                  if json.loads(x).get("name") == report["fork"]]
    assert [a["action"] for a in fork_audit] == ["cluster.fork", "cluster.fork.remove"]


def source_cluster() -> LocalCluster:
    return LocalCluster()  # $STUDYHUB_HOME: the session cluster


def test_the_table_shows_the_plan_statements_and_verdict(cli, source):
    profile, db, drafts = source
    write_example(drafts, SAFE)
    res = _rehearse_cli(cli, db, drafts, "--yes")
    assert res.exit_code == 0, res.stderr
    assert "remove the fork" in res.stdout and "also on failure or Ctrl-C" in res.stdout
    assert "ix_rehearse_subjects_name" in res.stdout
    assert "verdict: pass" in res.stdout and ": removed;" in res.stdout


@pytest.mark.slow
def test_a_blocking_migration_is_reported_with_its_measured_wait_and_fails(cli, source):
    profile, db, drafts = source
    safe = write_example(drafts, SAFE)
    blocking = write_example(drafts, BLOCKING, extra=BLOCKING_ACK, down=safe)
    res = _rehearse_cli(cli, db, drafts, "--yes", "--json", "--clients", "2")
    assert res.exit_code == 1, res.stderr
    report = json.loads(res.stdout)["report"]
    assert report["verdict"] == "fail"
    by_rev: dict[str, list[dict]] = {}
    for s in report["statements"]:
        by_rev.setdefault(s["measure"]["revision"], []).append(s)
    lock = next(s for s in by_rev[blocking] if "LOCK TABLE" in s["measure"]["statement"])
    assert not lock["passed"] and any("write waited" in r for r in lock["reasons"])
    assert lock["measure"]["waits"]["max_s"] > 1.0
    assert lock["measure"]["blocked_writes_max_s"] > 1.0
    assert all(s["passed"] for s in by_rev[safe])
    assert all(s["measure"]["blocked_writes_max_s"] <= 1.0 for s in by_rev[safe])
    _no_fork_left(source_cluster(), report["fork"], profile)


def test_a_migration_failing_on_the_fork_is_named_fork_removed_source_untouched(cli, source):
    profile, db, drafts = source
    safe = write_example(drafts, SAFE)
    bad = write_example(drafts, FAILING, down=safe)
    head = _head(profile, db)
    res = _rehearse_cli(cli, db, drafts, "--yes", "--json")
    assert res.exit_code == 1, res.stderr
    report = json.loads(res.stdout)["report"]
    assert report["verdict"] == "fail"
    failed = report["failed"]
    assert failed["revision"] == bad and "1/0" in failed["statement"]
    assert "division by zero" in failed["error"]
    assert any(r.startswith(f"{bad} #") and "failed on the fork" in r for r in report["reasons"])
    _no_fork_left(source_cluster(), report["fork"], profile)
    assert _head(profile, db) == head == report["source_revisions_after"]
    res = _rehearse_cli(cli, db, drafts, "--yes")
    assert res.exit_code == 1 and "failed on the fork: " + bad in res.stdout


def _first(phase: str, trigger: str | None):
    """A progress callback that raises KeyboardInterrupt (Ctrl-C) at ``phase``'s first message
    (or the first of that phase containing ``trigger``)."""
    seen: list[str] = []

    def progress(message: str) -> None:
        seen.append(message)
        if message.startswith(f"{phase}: ") and (trigger is None or trigger in message):
            raise KeyboardInterrupt

    return progress, seen


@pytest.mark.slow
@pytest.mark.parametrize("phase, trigger", [
    ("forking", "verifying the fork"),  # inside the backend: the fork runs already
    ("waiting", None),
    ("measuring", None),
    ("verdict", None),
])
def test_ctrl_c_at_every_phase_removes_the_fork(source, phase, trigger):
    profile, db, drafts = source
    write_example(drafts, SAFE)
    plan = ops.rehearse_plan(profile, database=db, extra_versions=[drafts])
    progress, seen = _first(phase, trigger)
    with pytest.raises(KeyboardInterrupt):
        ops.rehearse(profile, plan, progress=progress, poll_interval_s=0.2)
    assert any(m.startswith(f"{phase}: ") for m in seen)
    _no_fork_left(source_cluster(), plan.fork, profile)
    audit = _audit(source_cluster(), "migrate.rehearse")
    assert (audit["fork"], audit["outcome"], audit["fork_removal"]) == \
        (plan.fork, "interrupted", "removed" if phase != "forking" or trigger else "never created")
    assert _head(profile, db) == plan.current


def test_bad_input_is_one_clear_line_and_makes_nothing(cli, source):
    profile, db, drafts = source
    write_example(drafts, SAFE)
    for args, message in ((["--at", "2026-05-01 14:03"], "has no time zone"),
                          (["--name", "Bad_Name"], "invalid fork name"),
                          (["--max-blocked-write", "0s"], "0 would mean no limit")):
        res = _rehearse_cli(cli, db, drafts, "--yes", *args)
        assert res.exit_code == 1 and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = _rehearse_cli(cli, db, drafts)  # no --yes, not a terminal
    assert res.exit_code == 1 and "needs confirmation" in res.stderr


def test_thresholds_from_studyhub_toml_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "studyhub.toml"
    config.write_text("[migrate.rehearse]\nmax_blocked_write_s = 0.25\n"
                      "max_rewrite_table_bytes = 1048576\n")
    monkeypatch.setenv("STUDYHUB_CONFIG", str(config))
    limits = ops.thresholds()
    assert (limits.max_blocked_write_s, limits.max_rewrite_table_bytes,
            limits.max_access_exclusive_s) == (0.25, 1048576, 1.0)
    assert ops.thresholds({"max_blocked_write_s": 2.0}).max_blocked_write_s == 2.0
    config.write_text("[migrate.rehearse]\nmax_blocked_write = 1\n")
    with pytest.raises(Exception, match="unknown threshold 'max_blocked_write'"):
        ops.thresholds()


def test_the_verdict_judges_waits_exclusive_locks_and_rewrites_by_size():
    from studyhub.ops.migrate.rehearse.verdict import Thresholds, judge_statement

    def m(**kw):
        base = dict(revision="r1", index=3, statement="ALTER TABLE t …", wall_s=0.1,
                    lock_mode=None, lock_relation=None, lock_held_s=None,
                    waits=measure.WaitStats(0, 0.0, 0.0), blocked_writes_max_s=0.0, rewrote=[],
                    rows_rewritten=None, wal_bytes=0, disk_growth_bytes=0)
        return measure.StatementMeasure(**{**base, **kw})

    limits = Thresholds()
    sizes = {"public.big": 200 * 1024 * 1024, "public.small": 8192}
    assert judge_statement(m(), limits, sizes).passed
    v = judge_statement(m(blocked_writes_max_s=1.7), limits, sizes)
    assert not v.passed and "a write waited 1.70 s" in v.reasons[0]
    v = judge_statement(m(lock_mode="AccessExclusiveLock", lock_relation="t", lock_held_s=2.5),
                        limits, sizes)
    assert not v.passed and "held ACCESS EXCLUSIVE on t for 2.50 s" in v.reasons[0]
    assert judge_statement(m(lock_mode="ACCESS EXCLUSIVE", lock_held_s=0.2), limits, sizes).passed
    assert judge_statement(m(rewrote=["small"]), limits, sizes).passed
    v = judge_statement(m(rewrote=["public.big"]), limits, sizes)
    assert not v.passed and "rewrote public.big (200.0 MB" in v.reasons[0]


# ------------------------------------------------------------------------- DigitalOcean (fake)
def _do_draft(tmp_path: Path) -> Path:
    drafts = tmp_path / "do-drafts"
    write_example(drafts, SAFE)
    return drafts


def _do_rehearse(cli, drafts: Path, *args: object):
    return cli("migrate", "rehearse", "--profile", "staging", "--versions-dir", drafts,
               "--poll-interval", "0", *args)


def test_do_dry_run_sends_nothing(cli, do, tmp_path):
    drafts = _do_draft(tmp_path)
    res = _do_rehearse(cli, drafts, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "API requests it would send" in res.stdout and "POST /v2/databases" in res.stdout
    assert "nothing was sent" in res.stdout and "destroy" not in res.stderr
    out = json.loads(_do_rehearse(cli, drafts, "--dry-run", "--json").stdout)
    assert out["report"] is None and out["plan"]["offline"] is True
    assert out["plan"]["fork_plan"]["requests"][2]["method"] == "POST"
    assert do.fake.requests == []  # not even a read


def test_do_plan_says_size_duration_and_destruction(cli, do, tmp_path):
    drafts = _do_draft(tmp_path)
    out = json.loads(_do_rehearse(cli, drafts, "--dry-run", "--json").stdout)
    plan = out["plan"]
    assert "remove the fork" in " ".join(plan["summary"])
    res = _do_rehearse(cli, drafts)  # not a terminal, no --yes: refused after the plan
    assert res.exit_code == 1 and "needs confirmation" in res.stderr
    assert "db-s-1vcpu-2gb" in res.stdout and "several minutes" in res.stdout
    assert "billed" in res.stdout and do.fake.sent("POST") == []


def test_do_fork_creation_fails_nothing_left(cli, do, tmp_path, cluster):
    drafts = _do_draft(tmp_path)
    do.fake.fail("POST", r"^/v2/databases$", 422)
    res = _do_rehearse(cli, drafts, "--yes", "--name", "rehearse-post-fails")
    assert res.exit_code == 1 and "422" in res.stderr, res.stderr
    assert len(do.fake.sent("POST")) == 1 and do.fake.sent("DELETE") == []
    assert [c["name"] for c in do.fake.clusters.values()] == ["studyhub-staging"]
    audit = _audit(cluster, "migrate.rehearse")
    assert (audit["outcome"], audit["fork_removal"]) == ("failed", "never created")


def test_do_wait_timeout_destroys_the_fork(cli, do, tmp_path, cluster):
    drafts = _do_draft(tmp_path)
    do.fake.polls_until_online = 50
    res = _do_rehearse(cli, drafts, "--yes", "--timeout", "0", "--name", "rehearse-slow")
    assert res.exit_code == 1 and "still 'creating'" in res.stderr
    [delete] = do.fake.sent("DELETE")
    assert delete.status == 204
    assert [c["name"] for c in do.fake.clusters.values()] == ["studyhub-staging"]
    assert _audit(cluster, "migrate.rehearse")["fork_removal"] == "destroyed"


def test_do_unreachable_fork_is_destroyed(cli, do, tmp_path):
    import socket

    drafts = _do_draft(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        do.fake.connection_port = s.getsockname()[1]  # nothing listens there
    res = _do_rehearse(cli, drafts, "--yes", "--name", "rehearse-unreachable")
    assert res.exit_code == 1 and "rehearse-unreachable" in res.stderr
    assert len(do.fake.sent("DELETE")) == 1
    assert [c["name"] for c in do.fake.clusters.values()] == ["studyhub-staging"]
    assert "fake-password-xyz" not in res.stderr


def test_do_destroy_failure_is_loud_and_names_the_fork(cli, do, tmp_path, cluster):
    drafts = _do_draft(tmp_path)
    do.fake.polls_until_online = 50
    do.fake.fail("DELETE", r"^/v2/databases/", 500, times=100)
    res = _do_rehearse(cli, drafts, "--yes", "--timeout", "0", "--name", "rehearse-stuck")
    assert res.exit_code == 1
    err = " ".join(res.stderr.split())
    assert "the rehearsal failed (" in err and "still 'creating'" in err  # the original error
    assert "fork rehearse-stuck could NOT be removed" in err
    assert "DigitalOcean bills it until it is destroyed" in err
    assert "studyhub cluster forks remove rehearse-stuck --profile staging --yes" in err
    assert "rehearse-stuck" in [c["name"] for c in do.fake.clusters.values()]  # still there
    assert do.fake.token not in res.stderr
    audit = _audit(cluster, "migrate.rehearse")
    assert audit["outcome"] == "failed" and "rehearse-stuck" in audit["error"]


def test_do_production_must_be_named_before_any_request(cli, do, tmp_path, monkeypatch):
    import os

    drafts = _do_draft(tmp_path)
    for key in ("HOST", "PORT", "DATABASE", "DO_CLUSTER_ID", "PASSWORD", "OPS_PASSWORD"):
        monkeypatch.setenv(f"STUDYHUB_PRODUCTION_{key}", os.environ[f"STUDYHUB_STAGING_{key}"])
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    res = cli("migrate", "rehearse", "--versions-dir", drafts, "--yes")
    assert res.exit_code == 1 and "name it explicitly with --profile production" in res.stderr
    assert do.fake.requests == []
