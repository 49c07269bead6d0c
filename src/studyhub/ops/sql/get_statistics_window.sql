-- How long this database's usage statistics have been collecting: since the last reset, or
-- (never reset) at least since the server started. "Never scanned" means little over minutes.
SELECT
    extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time()))::float8
                                                                 AS window_s,
    d.stats_reset IS NOT NULL                                    AS since_reset
FROM pg_stat_database d
WHERE d.datname = current_database();
