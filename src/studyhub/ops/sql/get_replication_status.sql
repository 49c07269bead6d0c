-- Replicas streaming from this server (run on the primary): how far behind each one is, in WAL
-- bytes (sent, flushed, replayed) and in seconds (as measured by the walsender).
SELECT
    r.pid,
    r.application_name                                           AS name,
    host(r.client_addr)                                          AS client_addr,
    r.state,
    r.sync_state,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn)::bigint    AS send_lag_bytes,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint   AS flush_lag_bytes,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint  AS replay_lag_bytes,
    extract(epoch FROM r.write_lag)::float8                      AS write_lag_s,
    extract(epoch FROM r.flush_lag)::float8                      AS flush_lag_s,
    extract(epoch FROM r.replay_lag)::float8                     AS replay_lag_s,
    extract(epoch FROM now() - r.reply_time)::float8             AS last_reply_age_s
FROM pg_stat_replication r
ORDER BY r.application_name;
