"""The doctor's thresholds: defaults below, then ``[doctor]`` in studyhub.toml, then
``--set name=value`` (keys are ``check.setting``, e.g. ``long_queries.warn_s``)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from studyhub.errors import ConfigError

DEFAULT_THRESHOLDS: dict[str, float] = {
    "connections.warn_pct": 70,            # of max_connections minus superuser-reserved
    "connections.critical_pct": 90,
    "idle_in_transaction.warn_s": 60,      # age of the open transaction
    "idle_in_transaction.critical_s": 600,
    "long_queries.warn_s": 60,             # PgHero's "long running" mark
    "long_queries.critical_s": 300,
    "blocked_queries.warn_s": 5,           # time spent waiting for a lock
    "blocked_queries.critical_s": 60,
    "replication_lag.warn_bytes": 16 * 1024**2,
    "replication_lag.critical_bytes": 1024**3,
    "replication_lag.warn_s": 5,
    "replication_lag.critical_s": 60,
    "replication_slots.critical_retained_bytes": 4 * 1024**3,
    "xid_wraparound.warn_age": 500_000_000,        # of ~2.1 billion
    "xid_wraparound.critical_age": 1_000_000_000,
    "sequences.warn_pct": 70,
    "sequences.critical_pct": 90,
    "unused_indexes.min_bytes": 1024**2,  # smaller unused indexes are not worth a warning
    "unused_indexes.min_window_s": 86_400,  # judged once the statistics cover a day of use
    "foreign_keys_without_index.min_table_bytes": 0,
    "cache_hit.warn_pct": 99,
    "cache_hit.critical_pct": 90,
    "cache_hit.min_reads": 10_000,         # below this many block accesses the ratio means little
    "vacuum.warn_dead_pct": 20,
    "vacuum.min_dead_rows": 10_000,
    "analyze.warn_modified_pct": 20,
    "analyze.min_modified_rows": 10_000,
    "slow_queries.min_calls": 100,         # PgHero's defaults
    "slow_queries.min_mean_ms": 20,
    # newest complete backup set per target: daily backups plus 2 h of slack, and two missed
    "backup_age.warn_h": 26,
    "backup_age.critical_h": 50,
    # newest successful restore drill: weekly drills plus a day of slack, and two missed
    "restore_drill.warn_days": 8,
    "restore_drill.critical_days": 15,
    # oldest WAL segment waiting to be archived (archiving falls behind or fails), and the free
    # space of the local WAL archive's file system
    "wal_archive.warn_lag_s": 300,
    "wal_archive.critical_lag_s": 1800,
    "wal_archive.warn_free_pct": 20,
    "wal_archive.critical_free_pct": 10,
    # age of an agent's newest heartbeat: it beats every 15 s by default, so 4 and 20 missed
    "agent_heartbeat.warn_s": 60,
    "agent_heartbeat.critical_s": 300,
}


def _config_thresholds() -> dict[str, Any]:
    raw = os.environ.get("STUDYHUB_CONFIG")
    path = Path(raw) if raw else Path.cwd() / "studyhub.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: line {exc.lineno}") from None
    flat: dict[str, Any] = {}
    for key, value in (data.get("doctor") or {}).items():
        if isinstance(value, dict):  # [doctor.long_queries] warn_s = 30
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:  # [doctor] "long_queries.warn_s" = 30
            flat[key] = value
    return flat


def thresholds(overrides: dict[str, Any] | None = None, *, use_config: bool = True) -> dict[str, float]:
    """Defaults, then studyhub.toml's [doctor], then ``overrides`` (e.g. from --set)."""
    result = dict(DEFAULT_THRESHOLDS)
    for source, values in (("studyhub.toml [doctor]", _config_thresholds() if use_config else {}),
                           ("--set", overrides or {})):
        for key, value in values.items():
            if key not in DEFAULT_THRESHOLDS:
                raise ConfigError(f"unknown doctor threshold {key!r} in {source}; known: "
                                  + ", ".join(sorted(DEFAULT_THRESHOLDS)))
            try:
                result[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"doctor threshold {key} in {source} must be a number, "
                                  f"not {value!r}") from None
    return result


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``["long_queries.warn_s=30"]`` → {"long_queries.warn_s": "30"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects name=value (e.g. long_queries.warn_s=30), got {pair!r}")
        out[key.strip()] = value.strip()
    return out
