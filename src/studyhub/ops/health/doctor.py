"""Running the doctor: every registered check (or those asked for) against one connection;
a check that cannot run comes back as ``warn`` saying why."""

from __future__ import annotations

import psycopg

from studyhub.connect import first_line
from studyhub.errors import ConfigError
from studyhub.ops import activity
from studyhub.ops.health.registry import (
    EXIT_CODES,
    NEEDS_ALL_STATS,
    REGISTRY,
    Check,
    CheckContext,
    DoctorReport,
    worst,
)
from studyhub.ops.health.thresholds import thresholds
from studyhub.profiles import Profile

TITLES = {"idle_in_transaction": "Sessions idle in a transaction",
          "long_queries": "Long-running queries", "blocked_queries": "Queries waiting for a lock",
          "replication_lag": "Replication lag", "slow_queries": "Slow queries",
          "replicas": "Replicas connected and streaming"}


def run_doctor(conn: psycopg.Connection, profile: Profile | None = None, *,
               limits: dict[str, float] | None = None,
               only: list[str] | None = None) -> DoctorReport:
    """Run every registered check (or those named in ``only``). A check that cannot run (no
    privilege, missing view) comes back as ``warn`` saying why; the others still run."""
    if only:
        unknown = [n for n in only if n not in REGISTRY]
        if unknown:
            raise ConfigError(f"unknown check(s) {', '.join(unknown)}; known: "
                              + ", ".join(REGISTRY))
    ctx = CheckContext(conn, profile, limits or thresholds())
    privilege = activity.monitor_privilege(conn)
    results = []
    for name, fn in REGISTRY.items():
        if only and name not in only:
            continue
        if name in NEEDS_ALL_STATS and not privilege.read_all_stats:
            results.append(Check(name, TITLES.get(name, name.replace("_", " ")), "warn",
                                 "not visible", "-", fix=privilege.grant,
                                 detail=f"{privilege.reason}: this check cannot tell"))
            continue
        try:
            results.append(fn(ctx))
        except psycopg.Error as exc:
            if not conn.autocommit:
                conn.rollback()
            results.append(Check(name, name.replace("_", " "), "warn", "could not check", "-",
                                 fix="run as a role with pg_monitor (the ops role)",
                                 detail=first_line(exc)))
    status = worst([c.status for c in results])
    return DoctorReport(profile.name if profile else "-", conn.info.dbname, status,
                        EXIT_CODES[status], results)
