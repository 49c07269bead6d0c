-- Every standby streaming from this server and how far behind it is (bytes not yet replayed,
-- and the time lag PostgreSQL measured). Needs pg_monitor for the LSN columns.
SELECT
    application_name,
    client_addr::text                                        AS client_addr,
    state,
    pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,
    extract(epoch FROM replay_lag)::float8                   AS replay_lag_s
FROM pg_stat_replication
ORDER BY application_name;
