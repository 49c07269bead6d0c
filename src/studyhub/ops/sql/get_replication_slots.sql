-- Replication slots and the WAL each one holds back (an inactive slot keeps WAL forever).
SELECT
    s.slot_name,
    s.slot_type,
    s.database,
    s.active,
    s.active_pid,
    s.wal_status,
    CASE WHEN pg_is_in_recovery() THEN NULL
         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint END AS retained_bytes
FROM pg_replication_slots s
ORDER BY s.slot_name;
