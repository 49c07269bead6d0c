-- Share of table and index block reads served from shared buffers in this database.
SELECT
    coalesce(sum(heap_blks_hit), 0)::bigint                      AS table_hits,
    coalesce(sum(heap_blks_read), 0)::bigint                     AS table_reads,
    coalesce(sum(idx_blks_hit), 0)::bigint                       AS index_hits,
    coalesce(sum(idx_blks_read), 0)::bigint                      AS index_reads
FROM pg_statio_user_tables;
