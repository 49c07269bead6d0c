-- Cumulative transaction and block counters of this database (deltas give TPS and hit ratio).
SELECT
    (xact_commit + xact_rollback)::bigint    AS transactions,
    blks_hit::bigint                         AS blocks_hit,
    blks_read::bigint                        AS blocks_read,
    clock_timestamp()                        AS measured_at
FROM pg_stat_database
WHERE datname = current_database();
