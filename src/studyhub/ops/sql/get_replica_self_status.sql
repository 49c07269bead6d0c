-- Run on a replica: is it in recovery, is replay paused, how far behind is it (received vs
-- replayed WAL, and the age of the last replayed transaction when it is behind).
SELECT
    pg_is_in_recovery()                                                   AS in_recovery,
    CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END AS replay_pause_state,
    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint AS receive_replay_gap_bytes,
    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8  AS last_replay_age_s,
    (SELECT status FROM pg_stat_wal_receiver)                             AS receiver_status;
