-- Work done by each statement of database %(database)s (this one) from the baseline snapshot
-- taken at %(start)s (see get_statement_snapshots_first_since) to the latest, summed over
-- consecutive snapshots of that statement. A counter that went down, or a changed
-- stats_reset, means the statistics were reset in between: the new value is all new work. A
-- statement first seen after the baseline counts whole (new, or back among the stored top
-- statements); the baseline only sets the starting counters. Values rather than
-- current_database() or a subquery let the planner read only the window's range of the
-- primary key; the text is read once per statement (its latest snapshot), not sorted along.
WITH window_rows AS (
    SELECT captured_at, role, queryid, stats_reset, calls, total_exec_ms, rows,
           shared_blks_hit, shared_blks_read, blk_read_ms, blk_write_ms,
           lag(calls)            OVER w AS p_calls,
           lag(stats_reset)      OVER w AS p_reset,
           lag(total_exec_ms)    OVER w AS p_total_exec_ms,
           lag(rows)             OVER w AS p_rows,
           lag(shared_blks_hit)  OVER w AS p_shared_blks_hit,
           lag(shared_blks_read) OVER w AS p_shared_blks_read,
           lag(blk_read_ms)      OVER w AS p_blk_read_ms,
           lag(blk_write_ms)     OVER w AS p_blk_write_ms,
           lag(captured_at)      OVER w AS p_captured_at
    FROM ops.statement_snapshots
    WHERE database = %(database)s AND captured_at >= %(start)s
    WINDOW w AS (PARTITION BY queryid, role COLLATE "C" ORDER BY captured_at)
), deltas AS (
    SELECT *,
           p_captured_at IS NULL OR calls < p_calls
               OR stats_reset IS DISTINCT FROM p_reset                 AS whole
    FROM window_rows
    WHERE captured_at > %(start)s
)
SELECT d.queryid,
       d.role,
       (SELECT q.query FROM ops.statement_snapshots q
        WHERE q.captured_at = max(d.captured_at) AND q.database = %(database)s
          AND q.role = d.role AND q.queryid = d.queryid)                         AS query,
       sum(CASE WHEN whole THEN calls ELSE calls - p_calls END)::bigint          AS calls,
       sum(CASE WHEN whole THEN total_exec_ms
                ELSE total_exec_ms - p_total_exec_ms END)::float8                AS total_exec_ms,
       sum(CASE WHEN whole THEN rows ELSE rows - p_rows END)::bigint             AS rows,
       sum(CASE WHEN whole THEN shared_blks_hit
                ELSE shared_blks_hit - p_shared_blks_hit END)::bigint            AS shared_blks_hit,
       sum(CASE WHEN whole THEN shared_blks_read
                ELSE shared_blks_read - p_shared_blks_read END)::bigint          AS shared_blks_read,
       sum(CASE WHEN whole THEN blk_read_ms
                ELSE blk_read_ms - p_blk_read_ms END)::float8                    AS blk_read_ms,
       sum(CASE WHEN whole THEN blk_write_ms
                ELSE blk_write_ms - p_blk_write_ms END)::float8                  AS blk_write_ms
FROM deltas d
GROUP BY d.queryid, d.role;
