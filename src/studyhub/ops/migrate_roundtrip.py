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

from studyhub.connect import connect
from studyhub.errors import RefusedError
from studyhub.ops import migrate
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
              extra_versions: migrate.ExtraVersions = (),
              lock_timeout: str = migrate.DEFAULT_LOCK_TIMEOUT) -> RoundtripResult:
    """For ``revision`` (or, with ``all_revisions``, every revision from the first one):
    upgrade to its parent and snapshot, upgrade to it and snapshot, downgrade to the parent
    and compare, upgrade again and compare."""
    if not profile.is_local:
        raise RefusedError(
            f"migrate roundtrip runs on a throwaway database of the local cluster, not on "
            f"{profile.name} (use --profile local; the migrations build the same schema there)")
    from studyhub.local.cluster import LocalCluster

    script = migrate.script_directory(extra_versions)
    if all_revisions:
        targets = [r for r in reversed(list(script.walk_revisions()))]
    else:
        try:
            target = script.get_revision(revision if revision != "head"
                                         else script.get_current_head())
        except Exception:  # alembic's CommandError / ResolutionError: unknown or ambiguous
            target = None
        if target is None:
            raise migrate.MigrationError(f"no migration {revision!r}")
        targets = [target]
    cluster = LocalCluster()
    name = f"roundtrip_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    steps: list[RoundtripStep] = []
    compared = 0
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
                    migrate.upgrade(profile, down, database=name, lock_timeout=lock_timeout,
                                    extra_versions=extra_versions)
                before = schema_snapshot(profile, name)
                migrate.upgrade(profile, rev.revision, database=name,
                                lock_timeout=lock_timeout, extra_versions=extra_versions)
                after = schema_snapshot(profile, name)
                migrate.downgrade(profile, down or "base", database=name,
                                  lock_timeout=lock_timeout, extra_versions=extra_versions)
                step.downgrade_differences = compare_snapshots(before, schema_snapshot(profile, name))
                migrate.upgrade(profile, rev.revision, database=name,
                                lock_timeout=lock_timeout, extra_versions=extra_versions)
                step.reupgrade_differences = compare_snapshots(after, schema_snapshot(profile, name))
                compared += len(before) + len(after)
            except migrate.MigrationError as exc:
                step.error = str(exc)
            step.duration_s = round(time.monotonic() - started, 3)
            if step.error:
                break
    finally:
        cluster.drop_database(name)
    return RoundtripResult(name, steps, compared)
