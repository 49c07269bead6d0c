-- Share of table and index block reads served from shared buffers in this database, and how
-- many blocks the user tables (with their indexes and TOAST) occupy: until reads exceed that,
-- every read may be the first touch of a block after a restart or a bulk load (a cold cache).
SELECT
    coalesce(sum(heap_blks_hit), 0)::bigint                      AS table_hits,
    coalesce(sum(heap_blks_read), 0)::bigint                     AS table_reads,
    coalesce(sum(idx_blks_hit), 0)::bigint                       AS index_hits,
    coalesce(sum(idx_blks_read), 0)::bigint                      AS index_reads,
    (coalesce(sum(pg_total_relation_size(relid)), 0)
        / current_setting('block_size')::bigint)::bigint         AS database_blocks
FROM pg_statio_user_tables;
