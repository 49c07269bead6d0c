"""``studyhub migrate roundtrip``: the runbook's local test — upgrade, downgrade, upgrade —
on a throwaway database, proving with a full schema comparison that each downgrade restores
the schema exactly and each re-upgrade rebuilds it exactly.

The throwaway database lives on the local cluster (``LocalCluster.create_database``) and is
dropped afterwards. Remote profiles are refused: a managed cluster's app role cannot create
databases, and a scratch database does not belong next to production data; the migrations
build the same schema on the local server (same PostgreSQL major version), which is what this
test needs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from alembic import command

from studyhub.audit import audited
from studyhub.connect import connect
from studyhub.errors import RefusedError
from studyhub.local import LocalCluster
from studyhub.ops.migrate.apply import run_unaudited
from studyhub.ops.migrate.revisions import (
    DEFAULT_LOCK_TIMEOUT,
    ExtraVersions,
    MigrationError,
    script_directory,
)
from studyhub.ops.queries import load
from studyhub.profiles import Profile

SchemaSnapshot = dict[tuple[str, str], str]  # (kind, name) → definition


@dataclass
class SchemaDifference:
    kind: str
    name: str
    expected: str | None  # None: should not exist
    actual: str | None  # None: missing

    def describe(self) -> str:
        if self.actual is None:
            return f"{self.kind} {self.name} is missing (expected: {self.expected})"
        if self.expected is None:
            return f"{self.kind} {self.name} is left over: {self.actual}"
        return f"{self.kind} {self.name} differs: expected {self.expected!r}, got {self.actual!r}"


@dataclass
class RoundtripStep:
    revision: str
    down_revision: str | None
    downgrade_differences: list[SchemaDifference] = field(default_factory=list)
    reupgrade_differences: list[SchemaDifference] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.downgrade_differences or self.reupgrade_differences or self.error)


@dataclass
class RoundtripResult:
    database: str
    steps: list[RoundtripStep]
    objects_compared: int

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def schema_snapshot(profile: Profile, database: str | None = None) -> SchemaSnapshot:
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="studyhub migrate roundtrip") as conn:
        rows = conn.execute(load("get_schema_objects")).fetchall()
    return {(kind, name): definition for kind, name, definition in rows}


def compare_snapshots(expected: SchemaSnapshot, actual: SchemaSnapshot) -> list[SchemaDifference]:
    out = []
    for key in sorted(set(expected) | set(actual)):
        a, b = expected.get(key), actual.get(key)
        if a != b:
            out.append(SchemaDifference(key[0], key[1], a, b))
    return out


def roundtrip(profile: Profile, revision: str = "head", *, all_revisions: bool = False,
              extra_versions: ExtraVersions = (),
              lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> RoundtripResult:
    """For ``revision`` (or, with ``all_revisions``, every revision from the first one):
    upgrade to its parent and snapshot, upgrade to it and snapshot, downgrade to the parent
    and compare, upgrade again and compare.

    Refused on a read-only profile, on production unless named explicitly, and on any profile
    that is not local. Audited as one ``migrate.roundtrip`` line (the throwaway database, the
    revisions tested, which failed) or ``migrate.roundtrip.failed``; the migrations it runs on
    the throwaway database are not audited one by one."""
    profile.require_changes_allowed("run a migration roundtrip")
    if not profile.is_local:
        raise RefusedError(
            f"migrate roundtrip runs on a throwaway database of the local cluster, not on "
            f"{profile.name} (use --profile local; the migrations build the same schema there)")
    with audited("migrate.roundtrip", profile.name, failed_action="migrate.roundtrip.failed",
                 error_text=False, revision="all" if all_revisions else revision) as line:
        script = script_directory(extra_versions)
        if all_revisions:
            targets = [r for r in reversed(list(script.walk_revisions()))]
        else:
            try:
                target = script.get_revision(revision if revision != "head"
                                             else script.get_current_head())
            except Exception:  # alembic's CommandError / ResolutionError: unknown or ambiguous
                target = None
            if target is None:
                raise MigrationError(f"no migration {revision!r}")
            targets = [target]
        cluster = LocalCluster()
        name = f"roundtrip_{uuid.uuid4().hex[:10]}"
        line["database"] = name
        cluster.create_database(name)
        steps: list[RoundtripStep] = []
        compared = 0

        def migrate(fn, to: str) -> None:
            run_unaudited(profile, fn, to, name, lock_timeout, extra_versions=extra_versions)

        try:
            for rev in targets:
                down = rev.down_revision
                if isinstance(down, (tuple, list)):
                    down = down[0] if down else None
                step = RoundtripStep(rev.revision, down)
                steps.append(step)
                started = time.monotonic()
                try:
                    if down:
                        migrate(command.upgrade, down)
                    before = schema_snapshot(profile, name)
                    migrate(command.upgrade, rev.revision)
                    after = schema_snapshot(profile, name)
                    migrate(command.downgrade, down or "base")
                    step.downgrade_differences = compare_snapshots(
                        before, schema_snapshot(profile, name))
                    migrate(command.upgrade, rev.revision)
                    step.reupgrade_differences = compare_snapshots(
                        after, schema_snapshot(profile, name))
                    compared += len(before) + len(after)
                except MigrationError as exc:
                    step.error = str(exc)
                step.duration_s = round(time.monotonic() - started, 3)
                if step.error:
                    break
        finally:
            cluster.drop_database(name)
        result = RoundtripResult(name, steps, compared)
        line.update(passed=result.ok, revisions=[s.revision for s in steps],
                    failed_revisions=[s.revision for s in steps if not s.ok],
                    objects_compared=compared)
    return result
