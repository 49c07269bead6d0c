"""Turn pg_stat_statements on (``studyhub diag statements enable``): what the runbook's
"enable once" step does by hand, planned, confirmed by the renderer and audited.

``plan_statements_enable`` asks the server, as the profile's administrator, what it takes:

- already installed and loaded → nothing to do (``already_enabled``);
- DigitalOcean (a profile with ``do_cluster_id``): the provider preloads the library and manages
  ``shared_preload_libraries``, so only ``CREATE EXTENSION`` (doadmin may);
- a self-managed server (the local cluster, or a remote profile without ``do_cluster_id``) whose
  running ``shared_preload_libraries`` lacks it: ``ALTER SYSTEM SET shared_preload_libraries``
  (the current list plus ``pg_stat_statements``) and the restart that needs — done here for the
  local cluster (its primary is restarted), left to the operator for a server studyhub does not
  run — then ``CREATE EXTENSION``;
- and, where the ops role exists, ``GRANT EXECUTE`` on ``pg_stat_statements_reset`` to it (so
  ``diag slow-queries --reset`` works, as on the local cluster).

A role that may not do it (not a superuser on a self-managed server, no ALTER SYSTEM privilege)
is refused at planning time with one line: nothing is changed. ``enable_statements`` carries out
a plan: it checks ``Profile.require_changes_allowed`` and writes one audit line
(``diag.statements.enable``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import connect, first_line
from studyhub.errors import StudyhubError
from studyhub.ops.extensions import extension_status
from studyhub.ops.queries import load
from studyhub.profiles import Profile

EXTENSION = "pg_stat_statements"
APP_NAME = "studyhub diag statements enable"
RESET_GRANT = "GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint)"


class StatementsEnableError(StudyhubError):
    """pg_stat_statements cannot be enabled by this role or on this server; nothing changed."""


@dataclass
class StatementsPlan:
    profile: str
    database: str
    provider: str  # local | digitalocean | self-managed
    role: str  # who runs it (the profile's admin user)
    installed: bool
    preloaded: bool | None  # None: cannot tell (the role may not read the setting)
    preload_libraries: list[str] | None  # the running shared_preload_libraries, when readable
    already_enabled: bool
    create_extension: bool = False
    new_preload_libraries: list[str] | None = None  # ALTER SYSTEM to this list; None: unchanged
    restart: str | None = None  # "local": done here; "manual": the operator must; None: none
    grant_reset_to: str | None = None
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StatementsEnableResult:
    profile: str
    database: str
    provider: str
    created_extension: bool
    preload_changed: bool
    restarted: bool
    restart_pending: bool  # the preload list was changed but the server still needs a restart
    enabled: bool  # installed and loaded now
    duration_s: float


def provider_of(profile: Profile) -> str:
    if profile.is_local:
        return "local"
    return "digitalocean" if profile.do_cluster_id else "self-managed"


def _split_libraries(raw: str) -> list[str]:
    return [x.strip().strip('"') for x in raw.split(",") if x.strip().strip('"')]


def _probe_loaded(conn: psycopg.Connection) -> bool:
    try:
        with conn.transaction():
            conn.execute(load("get_statement_stats_probe"))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return False
    return True


def _admin(profile: Profile, database: str | None) -> psycopg.Connection:
    return connect(profile, "admin", database=database, autocommit=True,
                   application_name=APP_NAME)


def plan_statements_enable(profile: Profile, database: str | None = None) -> StatementsPlan:
    """What enabling pg_stat_statements in ``database`` (default: the profile's) takes, asked
    as the profile's administrator. Raises ``StatementsEnableError`` (one line) when it cannot
    be done by this role or on this server."""
    provider = provider_of(profile)
    ops_user = profile.users.get("ops")
    with _admin(profile, database) as conn:
        db = conn.info.dbname
        installed, available, raw_libs, superuser, may_alter, role, ops_exists = conn.execute(
            load("get_statements_enable_facts"), {"ops_user": ops_user or ""}).fetchone()
        libs = _split_libraries(raw_libs) if raw_libs is not None else None
        if libs is not None:
            preloaded: bool | None = EXTENSION in libs
        elif installed:
            preloaded = _probe_loaded(conn)
        else:
            preloaded = None
    plan = StatementsPlan(profile.name, db, provider, role, installed, preloaded, libs,
                          already_enabled=bool(installed and preloaded))
    if plan.already_enabled:
        return plan
    if not available:
        raise StatementsEnableError(
            f"{EXTENSION} is not available on the server of database {db}: install the "
            f"PostgreSQL contrib package there (Debian: postgresql-contrib); nothing was changed")
    if provider == "digitalocean":
        if installed and preloaded is False:
            raise StatementsEnableError(
                f"{EXTENSION} is installed in {db} but not loaded; DigitalOcean manages "
                f"shared_preload_libraries (it preloads {EXTENSION}): ask its support; "
                f"nothing was changed")
        plan.notes.append(f"DigitalOcean preloads {EXTENSION} and manages "
                          f"shared_preload_libraries: only CREATE EXTENSION is needed")
    else:
        if not installed and not superuser:
            raise StatementsEnableError(
                f"role {role} may not CREATE EXTENSION {EXTENSION} in database {db}: it is an "
                f"untrusted extension, a superuser must (set the profile's admin_user); "
                f"nothing was changed")
        if preloaded is False:
            if not may_alter:
                raise StatementsEnableError(
                    f"role {role} may not change shared_preload_libraries (ALTER SYSTEM needs a "
                    f"superuser or GRANT ALTER SYSTEM ON PARAMETER shared_preload_libraries); "
                    f"nothing was changed")
            plan.new_preload_libraries = [*(libs or []), EXTENSION]
            plan.restart = "local" if provider == "local" else "manual"
            current = ", ".join(libs or []) or "empty"
            plan.steps.append(
                "ALTER SYSTEM SET shared_preload_libraries = "
                + ", ".join(f"'{x}'" for x in plan.new_preload_libraries)
                + f" (running value: {current}); it takes effect at the next restart")
            if plan.restart == "local":
                plan.steps.append("restart the local primary: every connection to it drops for "
                                  "a moment (the replica reconnects by itself)")
            else:
                plan.steps.append("then YOU restart the server (studyhub does not run it, e.g. "
                                  "systemctl restart postgresql); statistics start after that")
    if not installed:
        plan.create_extension = True
        plan.steps.append(f"in database {db}: CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
    if ops_exists and plan.create_extension:
        plan.grant_reset_to = ops_user
        plan.steps.append(f"{RESET_GRANT} TO {ops_user} (for diag slow-queries --reset)")
    return plan


def _restart_local_primary() -> None:
    # Imported here: only the local profile restarts anything.
    from studyhub.local import LocalCluster

    cluster = LocalCluster()
    cluster.stop_node("primary")
    cluster.start_node("primary")


def enable_statements(profile: Profile, plan: StatementsPlan) -> StatementsEnableResult:
    """Carry out ``plan`` (from ``plan_statements_enable``): ALTER SYSTEM and the local restart
    where planned, CREATE EXTENSION, the reset grant. Checks the profile allows changes and
    writes one audit line, however it ends."""
    profile.require_changes_allowed(f"enable {EXTENSION}")
    started = time.monotonic()
    restarted = preload_changed = False
    with audited("diag.statements.enable", profile.name, database=plan.database,
                 provider=plan.provider) as audit:
        try:
            if plan.new_preload_libraries is not None:
                with _admin(profile, plan.database) as conn:
                    conn.execute(sql.SQL(load("do_set_preload_libraries")).format(
                        libraries=sql.SQL(", ").join(
                            sql.Literal(x) for x in plan.new_preload_libraries)))
                preload_changed = True
                if plan.restart == "local":
                    _restart_local_primary()
                    restarted = True
            with _admin(profile, plan.database) as conn:
                if plan.create_extension:
                    conn.execute(load("do_create_statements_extension"))
                if plan.grant_reset_to:
                    conn.execute(sql.SQL(load("do_grant_statements_reset")).format(
                        role=sql.Identifier(plan.grant_reset_to)))
                enabled = extension_status(conn, EXTENSION).usable
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StatementsEnableError(
                f"role {plan.role} may not enable {EXTENSION} in database {plan.database}: "
                f"{first_line(exc)}") from None
        except psycopg.Error as exc:
            raise StatementsEnableError(
                f"enabling {EXTENSION} in database {plan.database} failed: {first_line(exc)}"
            ) from None
        result = StatementsEnableResult(
            profile.name, plan.database, plan.provider, plan.create_extension, preload_changed,
            restarted, restart_pending=preload_changed and not restarted, enabled=enabled,
            duration_s=round(time.monotonic() - started, 3))
        audit.update(created_extension=result.created_extension,
                     preload_changed=preload_changed, restarted=restarted,
                     enabled=result.enabled)
    return result
