-- Which sessions block backend %(pid)s right now, what it waits for, and what they hold:
-- pg_blocking_pids() (hard and soft blockers, PostgreSQL's own answer) joined to pg_locks and
-- pg_stat_activity. Readable by any role; other users' details need pg_read_all_stats
-- (pg_monitor, which studyhub_ops has).
WITH waiting AS (
    SELECT locktype, relation, transactionid, virtualxid, mode
    FROM pg_locks
    WHERE pid = %(pid)s AND NOT granted
    LIMIT 1
)
SELECT
    b.pid,
    a.usename                                           AS user_name,
    a.application_name,
    host(a.client_addr)                                 AS client_addr,
    a.state,
    extract(epoch FROM now() - a.xact_start)::float8    AS xact_age_s,
    coalesce(w.relation::regclass::text, w.locktype)    AS waiting_for,
    w.mode                                              AS waiting_mode,
    (SELECT string_agg(DISTINCT l.mode, ', ')
       FROM pg_locks l
      WHERE l.pid = b.pid AND l.granted
        AND l.locktype = w.locktype
        AND l.relation IS NOT DISTINCT FROM w.relation
        AND l.transactionid IS NOT DISTINCT FROM w.transactionid
        AND l.virtualxid IS NOT DISTINCT FROM w.virtualxid)  AS held_modes,
    left(a.query, 120)                                  AS query
FROM unnest(pg_blocking_pids(%(pid)s)) AS b(pid)
LEFT JOIN pg_stat_activity a ON a.pid = b.pid
LEFT JOIN waiting w ON true
ORDER BY a.xact_start NULLS LAST;
