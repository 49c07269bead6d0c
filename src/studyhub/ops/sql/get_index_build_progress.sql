-- Progress of a CREATE INDEX [CONCURRENTLY] running in the given backend.
SELECT
    phase,
    blocks_done,
    blocks_total,
    tuples_done,
    tuples_total,
    lockers_done,
    lockers_total
FROM pg_stat_progress_create_index
WHERE pid = %(pid)s;
