"""``diag doctor``: a registry of small named checks (PgHero-style). Each returns a ``Check``
with a status (ok / warn / critical), the measured value, the threshold it was held against and
the fix; the CLI, ``--json`` and the dashboard render the same list.

The checks live by area — ``sessions``, ``replication``, ``limits`` (XID wraparound,
sequences), ``schema`` (indexes, constraints), ``maintenance`` (cache hit, vacuum), ``queries``
(pg_stat_statements), ``server_log`` (settings that copy values into the log), ``backups``
(the newest backup set's age per target, the last restore drill, WAL archiving), ``heartbeat``
(``studyhub agent``'s own heartbeat) — and register in that order, which is the report's order. ``registry`` holds the types and ``@check``,
``thresholds`` the defaults and their overrides (``[doctor]`` in studyhub.toml, ``--set``),
``doctor`` runs them (``run_doctor``).
"""

# Imported in the report's order: each module registers its checks as it is imported.
from studyhub.ops.health import sessions as _sessions  # noqa: F401
from studyhub.ops.health import replication as _replication  # noqa: F401
from studyhub.ops.health import limits as _limits  # noqa: F401
from studyhub.ops.health import schema as _schema  # noqa: F401
from studyhub.ops.health import maintenance as _maintenance  # noqa: F401
from studyhub.ops.health import queries as _queries  # noqa: F401
from studyhub.ops.health import server_log as _server_log  # noqa: F401
from studyhub.ops.health import backups as _backups  # noqa: F401
from studyhub.ops.health import heartbeat as _heartbeat  # noqa: F401
from studyhub.ops.health.backups import backup_age_check, restore_drill_check, wal_archive_check
from studyhub.ops.health.doctor import TITLES, run_doctor
from studyhub.ops.health.maintenance import judge_cache_hit
from studyhub.ops.health.registry import (
    EXIT_CODES,
    NEEDS_ALL_STATS,
    REGISTRY,
    STATUSES,
    Check,
    CheckContext,
    DoctorReport,
    check,
    grade,
    worst,
)
from studyhub.ops.health.server_log import DO_LOG_CONFIG, LOG_VALUE_SETTINGS, log_value_leaks
from studyhub.ops.health.thresholds import DEFAULT_THRESHOLDS, parse_settings, thresholds

__all__ = [
    "Check", "CheckContext", "backup_age_check", "restore_drill_check", "wal_archive_check",
    "DEFAULT_THRESHOLDS", "DO_LOG_CONFIG", "DoctorReport", "EXIT_CODES",
    "LOG_VALUE_SETTINGS", "NEEDS_ALL_STATS", "REGISTRY", "STATUSES", "TITLES", "check", "grade",
    "judge_cache_hit", "log_value_leaks", "parse_settings", "run_doctor", "thresholds", "worst",
]
