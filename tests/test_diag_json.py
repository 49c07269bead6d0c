"""The --json shapes documented in docs/diag.md ("JSON shapes"): top-level keys of every read
command, so scripts can rely on them."""

from __future__ import annotations

from studyhub.ops import migrate
from tests.conftest import connect_as
from tests.diag_helpers import Background, as_json, is_running, wait_for

SLOW_QUERIES = {"database", "sort", "window", "stats_reset", "total_exec_ms", "statements",
                "snapshot_saved", "notes"}
SLOW_QUERY = {"queryid", "role", "calls", "total_exec_ms", "mean_ms", "share_pct", "rows",
              "cache_hit_pct", "shared_blks_read", "io_ms", "query"}
INDEXES = {"database", "missing", "unused", "duplicate", "invalid", "bloat",
           "foreign_keys_without_index"}
ADVISE = {"database", "min_cost", "min_saving_pct", "min_calls", "statements",
          "recommendations", "candidates_tried", "notes"}
CONNECTIONS = {"by", "max_connections", "superuser_reserved", "total", "groups", "pools",
               "pooler_note"}
LOCKS = {"profile", "roots"}
REPLICATION = {"is_replica", "replicas", "slots", "replica_self", "replica_note"}
SIZES = {"database", "database_bytes", "tables"}
TOP = {"database", "tps", "cache_hit_pct", "connections_by_state", "max_connections",
       "replication_lag_bytes", "replication_lag_s", "sessions"}
TOP_SESSION = {"pid", "database", "role", "application", "client_addr", "state", "age_s",
               "wait_event_type", "wait_event", "blocked_by", "blocking", "query_id", "query"}
QUERY_ROW = {"pid", "database", "role", "application", "client_addr", "backend_type", "state",
             "wait_event_type", "wait_event", "backend_age_s", "xact_age_s", "query_age_s",
             "state_age_s", "blocked_by", "query_id", "query", "ssl", "backend_start",
             "is_self", "is_superuser", "age_s", "fingerprint"}


def test_every_read_command_keeps_its_documented_json_shape(profile, fresh_db, cli):
    migrate.upgrade(profile, database=fresh_db)
    with connect_as(profile, "app", fresh_db) as c:
        for i in range(3):
            c.execute("SELECT count(*) FROM students WHERE school = %s", (f"s{i}",))
    sleeper = Background(profile, "SELECT pg_sleep(60)", database=fresh_db)
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        d = ("-d", fresh_db)
        slow = as_json(cli("diag", "slow-queries", *d, "--json"))
        assert set(slow) == SLOW_QUERIES and set(slow["statements"][0]) == SLOW_QUERY
        assert set(as_json(cli("diag", "indexes", *d, "--json"))) == INDEXES
        assert set(as_json(cli("diag", "advise", *d, "--json"))) == ADVISE
        conns = as_json(cli("diag", "connections", *d, "--json"))
        assert set(conns) == CONNECTIONS
        assert set(conns["groups"][0]) == {"key", "total", "active", "idle",
                                           "idle_in_transaction", "other", "ssl"}
        assert set(as_json(cli("diag", "locks", *d, "--json"))) == LOCKS
        assert set(as_json(cli("diag", "replication", *d, "--json"))) == REPLICATION
        sizes = as_json(cli("diag", "sizes", *d, "--json"))
        assert set(sizes) == SIZES and {"schema", "table", "row_estimate", "total_bytes",
                                        "heap_bytes", "index_bytes", "toast_bytes",
                                        "rows"} == set(sizes["tables"][0])
        top = as_json(cli("top", "--once", "--json", "--interval", "0.2", *d))
        assert set(top) == TOP and set(top["sessions"][0]) == TOP_SESSION
        rows = as_json(cli("emergency", "queries", *d, "--older-than", "0s", "--json"))
        assert isinstance(rows, list) and set(rows[0]) == QUERY_ROW
        assert sleeper.pid in {r["pid"] for r in rows}
    finally:
        sleeper.close()
