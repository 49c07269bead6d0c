-- The oldest activity snapshots (with their samples) beyond a size budget: newest first, each
-- snapshot's estimated live bytes (as get_activity_history_size.sql) are added up, and the
-- snapshots past the budget are deleted.
WITH per_sample AS (
    SELECT coalesce(avg(pg_column_size(x.*)), 0) + 32 AS bytes
    FROM (SELECT * FROM ops.activity_samples ORDER BY taken_at DESC LIMIT 1000) x
),
per_snapshot AS (
    SELECT coalesce(avg(pg_column_size(x.*)), 0) + 32 AS bytes
    FROM (SELECT * FROM ops.activity_snapshots ORDER BY taken_at DESC LIMIT 1000) x
),
running AS (
    SELECT s.taken_at,
           sum(ps.bytes + s.sampled * pp.bytes) OVER (ORDER BY s.taken_at DESC) AS upto_bytes
    FROM ops.activity_snapshots s, per_snapshot ps, per_sample pp
)
DELETE FROM ops.activity_snapshots s
USING running r
WHERE s.taken_at = r.taken_at AND r.upto_bytes > %(max_bytes)s;
