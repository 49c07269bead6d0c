-- The activity history's live size, estimated (rows and their index entries: what deleting
-- rows gives back for reuse, unlike the files' size, which does not shrink): the mean width
-- of the newest 1000 rows of each table (+32 bytes: line pointer and primary-key entry) times
-- the rows, counted from the snapshots' ``sampled``.
WITH per_sample AS (
    SELECT coalesce(avg(pg_column_size(x.*)), 0) + 32 AS bytes
    FROM (SELECT * FROM ops.activity_samples ORDER BY taken_at DESC LIMIT 1000) x
),
per_snapshot AS (
    SELECT coalesce(avg(pg_column_size(x.*)), 0) + 32 AS bytes
    FROM (SELECT * FROM ops.activity_snapshots ORDER BY taken_at DESC LIMIT 1000) x
)
SELECT coalesce(sum(ps.bytes + s.sampled * pp.bytes), 0)::bigint AS live_bytes,
       count(*)                                                  AS snapshots,
       min(s.taken_at)                                           AS first_at,
       pg_total_relation_size('ops.activity_snapshots')
         + pg_total_relation_size('ops.activity_samples')
         + pg_total_relation_size('ops.statement_fingerprints')  AS disk_bytes
FROM ops.activity_snapshots s, per_snapshot ps, per_sample pp;
