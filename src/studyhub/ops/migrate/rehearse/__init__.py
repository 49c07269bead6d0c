"""``migrate rehearse``: apply the pending migrations to a point-in-time fork of the target
while a synthetic workload runs there, measure each statement, remove the fork (always), and
judge the measurements against thresholds.

- ``rehearse_plan(profile, ...)`` says what would happen and sends nothing that changes
  anything: the pending revisions (none → no fork), the fork (the cluster backend's own plan:
  on DigitalOcean size, cost and the exact API requests), a fresh local base backup first when
  none is usable, the expected duration, that the fork will be destroyed, the thresholds;
- ``rehearse(profile, plan, ...)`` carries it out in phases — basebackup (local, only when
  needed), forking, waiting, measuring, verdict — and removes the fork in every case (failure,
  Ctrl-C at any phase); a fork that cannot be removed raises ``ForkNotRemovedError`` naming it
  and the command that removes it. One audit line, ``migrate.rehearse`` (verdict summary, no
  SQL). The target itself is only read (its alembic revision, before and after).

``measure`` (the measurement engine: workload, lock watcher, per-statement numbers),
``verdict`` (thresholds, ``[migrate.rehearse]`` in studyhub.toml) and ``fork`` (the fork's
lifecycle) are its parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from studyhub.audit import audited
from studyhub.connect import ConnectError, connect
from studyhub.ops.cluster import (
    ClusterOpError,
    Plan,
    apply_plan,
    backend_for,
    check_name,
    iso,
)
from studyhub.ops.migrate.apply import current
from studyhub.ops.migrate.rehearse.fork import (
    ForkNotRemovedError,
    fork_name,
    fork_target,
    remove_command,
    remove_fork,
    wait_reachable,
)
from studyhub.ops.migrate.rehearse.measure import (
    Measurement,
    StatementMeasure,
    WorkloadSpec,
    WorkloadStats,
    measure_migrations,
)
from studyhub.ops.migrate.rehearse.pending import pending_between
from studyhub.ops.migrate.rehearse.verdict import (
    StatementVerdict,
    Thresholds,
    Verdict,
    judge,
    thresholds,
)
from studyhub.ops.migrate.revisions import ExtraVersions
from studyhub.ops.space import table_sizes
from studyhub.profiles import Profile

Progress = Callable[[str], None]
PHASES = ("basebackup", "forking", "waiting", "measuring", "verdict")


def _noop(_: str) -> None:
    pass


@dataclass
class RehearsalPlan:
    profile: str
    provider: str
    database: str
    target: str  # the revision to upgrade to ("head")
    current: list[str]  # where the target database is
    pending: list[str]  # what the rehearsal applies on the fork, oldest first
    fork: str  # the fork's name
    at: datetime | None  # point in time of the fork (None: now, when it is made)
    summary: list[str]  # for people
    thresholds: Thresholds
    workload: WorkloadSpec
    fork_plan: Plan | None = None  # the backend's plan (None: nothing pending, or made later)
    basebackup_first: bool = False  # local: no usable base backup, take one before forking
    expected_duration: str | None = None
    offline: bool = False  # built without asking DigitalOcean anything (--dry-run)
    extra_versions: list[str] = field(default_factory=list)

    @property
    def nothing_pending(self) -> bool:
        return not self.pending


@dataclass
class RehearsedStatement:
    measure: StatementMeasure
    passed: bool
    reasons: list[str]


@dataclass
class RehearsalReport:
    profile: str
    provider: str
    database: str
    fork: str
    at: datetime | None
    revisions: list[str]
    verdict: str  # "pass" | "fail"
    summary: str  # e.g. "fail (9 statement(s), 1 over a threshold or failed)"
    reasons: list[str]
    statements: list[RehearsedStatement]
    failed: StatementMeasure | None  # the statement that failed on the fork
    workload: WorkloadStats
    thresholds: Thresholds
    fork_removal: str  # "removed" (local), "destroyed" (DigitalOcean)
    source_revisions_before: list[str]  # the target's own revision: never changed
    source_revisions_after: list[str]
    durations_s: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _pending(profile: Profile, to: str, database: str | None,
             extra_versions: ExtraVersions) -> tuple[list[str], list[str], str]:
    cur = current(profile, database)
    return cur, pending_between(cur, to, extra_versions=extra_versions), \
        profile.endpoint("app", database).database


def rehearse_plan(profile: Profile, *, at: datetime | None = None, name: str | None = None,
                  to: str = "head", database: str | None = None,
                  extra_versions: ExtraVersions = (), workload: WorkloadSpec | None = None,
                  limits: Thresholds | None = None, offline: bool = False,
                  timeout_s: float = 3600) -> RehearsalPlan:
    """What ``rehearse`` would do (reads the target's revision; ``offline``: no DigitalOcean
    request at all). No pending migration → a plan that says so and makes no fork."""
    name = check_name(name, "fork") if name else fork_name()
    workload = workload or WorkloadSpec()
    limits = limits or thresholds()
    cur, pending, dbname = _pending(profile, to, database, extra_versions)
    backend = backend_for(profile)
    base = dict(profile=profile.name, provider=backend.provider, database=dbname, target=to,
                current=cur, pending=pending, fork=name, at=at, thresholds=limits,
                workload=workload, offline=offline,
                extra_versions=[str(p) for p in extra_versions])
    where = f"{profile.name}/{dbname}"
    if not pending:
        return RehearsalPlan(**base, summary=[
            f"nothing to rehearse: {where} is at {', '.join(cur) or 'base'} ({to}); "
            "no fork is made"])
    summary = [f"rehearse {', '.join(pending)} on a fork of {where} (at "
               f"{', '.join(cur) or 'base'}); nothing is applied to {profile.name} itself"]
    fork_plan = None
    basebackup_first = False
    when = at or datetime.now(timezone.utc)
    if backend.provider == "local":
        window = backend.backups().window
        if window.earliest is None and at is None:
            basebackup_first = True
            summary.append(f"no usable base backup ({window.basis}): take a fresh one first "
                           "(as `studyhub cluster basebackup`), then fork from it as of now")
        else:
            fork_plan = backend.fork_plan(when, name, offline=offline)
        expected = ("local: restore of the base backup and WAL replay, typically seconds to a "
                    "few minutes; the fork needs as much disk as the database")
    else:
        fork_plan = backend.fork_plan(when, name, offline=offline)
        size = fork_plan.params["body"].get("size")
        expected = (f"DigitalOcean: a fork from backup usually takes several minutes to come "
                    f"online, longer for big databases (waits at most {timeout_s:.0f} s); "
                    f"billed as a {size} cluster while it exists")
    if fork_plan is not None:
        summary += [f"fork {name}: {line}" for line in fork_plan.summary]
    summary += [
        "wait until the fork accepts connections",
        f"apply {', '.join(pending)} on the fork while a '{workload.kind}' workload runs "
        f"({workload.clients} client(s)); measure each statement's time, locks, waits behind "
        "it, rewrites, WAL and disk growth",
        f"remove the fork {name} afterwards — also on failure or Ctrl-C",
        f"verdict: fail if a write waits > {limits.max_blocked_write_s:g} s, ACCESS EXCLUSIVE "
        f"is held > {limits.max_access_exclusive_s:g} s, or a table over "
        f"{limits.max_rewrite_table_bytes / 1024 / 1024:g} MB is rewritten",
    ]
    return RehearsalPlan(**base, summary=summary, fork_plan=fork_plan,
                         basebackup_first=basebackup_first, expected_duration=expected)


def _sizes(target: Profile, database: str | None) -> dict[str, int]:
    """Table → bytes on the fork before the migrations (what a rewrite costs)."""
    try:
        with connect(target, "app", database=database, autocommit=True,
                     application_name="studyhub migrate rehearse") as conn:
            space = table_sizes(conn)
    except ConnectError:
        return {}
    return {f"{t.schema}.{t.table}": t.total_bytes for t in space.tables}


def _audit_summary(report: RehearsalReport) -> dict[str, Any]:
    """Names and numbers only: never a statement's text or an error's (they can quote data)."""
    failing = [f"{s.measure.revision}#{s.measure.index}" for s in report.statements
               if not s.passed]
    return {"verdict": report.verdict, "statements": len(report.statements),
            "failing_statements": failing,
            "failed_on_fork": (f"{report.failed.revision}#{report.failed.index}"
                               if report.failed else None),
            "max_blocked_write_s": max((s.measure.blocked_writes_max_s
                                        for s in report.statements), default=0.0),
            "fork_removal": report.fork_removal}


def rehearse(profile: Profile, plan: RehearsalPlan, *, workload: WorkloadSpec | None = None,
             limits: Thresholds | None = None, progress: Progress = _noop,
             timeout_s: float = 3600, poll_interval_s: float = 10,
             reach_timeout_s: float = 300) -> RehearsalReport:
    """Carry out ``plan`` (see the module). Messages to ``progress`` start with the phase
    ("forking: …"). Refused like any change (production must be named explicitly); audited as
    ``migrate.rehearse`` (``outcome`` failed / interrupted included)."""
    if plan.offline:
        raise ClusterOpError("an offline (dry-run) plan cannot be carried out; plan again")
    if plan.nothing_pending:
        raise ClusterOpError("nothing to rehearse: no pending migration, no fork made")
    profile.require_changes_allowed("migrate rehearse (makes a fork of the cluster)")
    workload = workload or plan.workload
    limits = limits or plan.thresholds
    backend = backend_for(profile)
    if backend.provider == "local":  # a local fork checks its own recovery every 0.2 s
        poll_interval_s = min(poll_interval_s, 0.2)
    database = plan.database if plan.database != profile.database else None
    with audited("migrate.rehearse", profile.name, provider=backend.provider,
                 database=plan.database, fork=plan.fork, revisions=plan.pending) as line:
        before = current(profile, database)
        started = time.monotonic()
        durations: dict[str, float] = {}

        def phase(name: str, message: str) -> None:
            progress(f"{name}: {message}")

        def run() -> tuple[Measurement, Verdict]:
            fork_plan = plan.fork_plan
            if plan.basebackup_first:
                phase("basebackup", "no usable base backup: taking one")
                apply_plan(backend, backend.basebackup_plan(),
                           progress=lambda m: phase("basebackup", m))
                fork_plan = backend.fork_plan(plan.at or datetime.now(timezone.utc), plan.fork)
            assert fork_plan is not None
            phase("forking", f"{plan.fork} as of {iso(plan.at) if plan.at else 'now'}")
            t = time.monotonic()
            result = apply_plan(backend, fork_plan, progress=lambda m: phase("forking", m),
                                timeout_s=timeout_s, poll_interval_s=poll_interval_s)
            durations["fork_s"] = round(time.monotonic() - t, 3)
            target = fork_target(profile, result.fork)
            phase("waiting", f"until {plan.fork} accepts connections")
            durations["wait_s"] = wait_reachable(
                target, database, timeout_s=reach_timeout_s,
                poll_interval_s=min(poll_interval_s, 1.0),
                progress=lambda m: phase("waiting", m))
            phase("measuring", f"table sizes on {plan.fork}")
            sizes = _sizes(target, database)
            t = time.monotonic()
            measurement = measure_migrations(
                target, to=plan.target, database=database, workload=workload,
                progress=lambda m: phase("measuring", m),
                **({"extra_versions": plan.extra_versions} if plan.extra_versions else {}))
            durations["measure_s"] = round(time.monotonic() - t, 3)
            phase("verdict", f"{len(measurement.statements)} statement(s) against the thresholds")
            return measurement, judge(measurement, limits, sizes)

        try:
            measurement, verdict = run()
        except BaseException as exc:
            t = time.monotonic()
            removal = remove_fork(backend, plan.fork, cause=exc)  # raises if it cannot
            line["fork_removal"] = removal
            durations["remove_s"] = round(time.monotonic() - t, 3)
            raise
        report = _report(profile, plan, backend.provider, measurement, verdict, limits, before,
                         durations)
        t = time.monotonic()
        try:
            report.fork_removal = remove_fork(backend, plan.fork)
        except ForkNotRemovedError as exc:
            exc.report = report
            line.update(_audit_summary(report), fork_removal="FAILED")
            raise
        durations["remove_s"] = round(time.monotonic() - t, 3)
        report.source_revisions_after = current(profile, database)
        durations["total_s"] = round(time.monotonic() - started, 3)
        line.update(_audit_summary(report))
    return report


def _report(profile: Profile, plan: RehearsalPlan, provider: str, measurement: Measurement,
            verdict: Verdict, limits: Thresholds, before: list[str],
            durations: dict[str, float]) -> RehearsalReport:
    by_key: dict[tuple[str, int], StatementVerdict] = {
        (v.revision, v.index): v for v in verdict.statements}
    measures = list(measurement.statements)
    if measurement.failed is not None and measurement.failed not in measures:
        measures.append(measurement.failed)
    statements = []
    for m in measures:
        v = by_key.get((m.revision, m.index))
        statements.append(RehearsedStatement(m, v.passed if v else True,
                                             list(v.reasons) if v else []))
    return RehearsalReport(
        profile=profile.name, provider=provider, database=plan.database, fork=plan.fork,
        at=plan.at, revisions=measurement.revisions or plan.pending,
        verdict="pass" if verdict.passed else "fail", summary=verdict.summary,
        reasons=verdict.reasons, statements=statements, failed=measurement.failed,
        workload=measurement.workload, thresholds=limits, fork_removal="?",
        source_revisions_before=before, source_revisions_after=before, durations_s=durations)


__all__ = [
    "PHASES", "ForkNotRemovedError", "Measurement", "RehearsalPlan", "RehearsalReport",
    "RehearsedStatement", "StatementMeasure", "Thresholds", "WorkloadSpec", "WorkloadStats",
    "rehearse", "rehearse_plan", "remove_command", "thresholds",
]
