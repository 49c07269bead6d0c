-- One standby streaming from this primary, by its application_name: its walsender's state
-- ('streaming' once caught up) and the WAL bytes it has not replayed yet.
SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS lag_bytes
FROM pg_stat_replication
WHERE application_name = %(application_name)s;
