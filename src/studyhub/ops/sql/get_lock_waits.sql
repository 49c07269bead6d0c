-- Sessions waiting for a lock: the lock they wait for (mode, kind, object) and who blocks them.
SELECT
    a.pid,
    pg_blocking_pids(a.pid)                                   AS blocked_by,
    l.mode                                                    AS waiting_mode,
    l.locktype                                                AS lock_type,
    CASE WHEN l.locktype = 'tuple' THEN 'a row of ' || l.relation::regclass::text
         WHEN l.relation IS NOT NULL THEN l.relation::regclass::text
         WHEN l.locktype = 'transactionid' THEN 'transaction ' || l.transactionid::text
         WHEN l.locktype = 'virtualxid' THEN 'virtual transaction ' || l.virtualxid
         WHEN l.locktype = 'advisory' THEN 'advisory ' || l.classid::text || ':' || l.objid::text
         ELSE l.locktype END                                  AS locked_object
FROM pg_stat_activity a
JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
WHERE cardinality(pg_blocking_pids(a.pid)) > 0;
