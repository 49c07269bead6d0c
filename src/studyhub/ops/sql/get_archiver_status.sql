-- Continuous archiving: the last WAL segment archived and the last failure, if any.
SELECT
    current_setting('archive_mode')  AS archive_mode,
    archived_count,
    last_archived_wal,
    last_archived_time,
    failed_count,
    last_failed_wal,
    last_failed_time
FROM pg_stat_archiver;
