-- Continuous archiving as the doctor judges it: pg_stat_archiver's last success and failure,
-- and the completed WAL segments still waiting for archive_command (.ready files; reading
-- them takes pg_monitor), with how long the oldest has waited.
SELECT
    current_setting('archive_mode')                                     AS archive_mode,
    pg_is_in_recovery()                                                 AS in_recovery,
    a.archived_count,
    a.last_archived_wal,
    a.last_archived_time,
    extract(epoch FROM now() - a.last_archived_time)::float8            AS last_archived_age_s,
    a.failed_count,
    a.last_failed_wal,
    a.last_failed_time,
    a.stats_reset,
    r.ready_segments,
    extract(epoch FROM now() - r.oldest_ready_at)::float8               AS oldest_ready_age_s
FROM pg_stat_archiver a,
     LATERAL (SELECT count(*)::int AS ready_segments, min(modification) AS oldest_ready_at
              FROM pg_ls_archive_statusdir()
              WHERE name LIKE '%%.ready') r;
