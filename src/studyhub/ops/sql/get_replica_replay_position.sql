-- How far a streaming replica has replayed, run on the replica itself.
-- replay_lsn is NULL when the server is not in recovery (e.g. a promoted replica): not a reader.
SELECT pg_is_in_recovery()                                   AS in_recovery,
       pg_last_wal_replay_lsn()::text                        AS replay_lsn,
       pg_last_wal_receive_lsn()::text                       AS receive_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
                                                             AS last_replayed_xact_age_s
