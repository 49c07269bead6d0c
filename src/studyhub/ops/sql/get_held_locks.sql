-- The strongest relation lock each given backend holds, tables before their indexes (to show
-- what a blocker is holding).
SELECT DISTINCT ON (l.pid)
    l.pid,
    l.mode                                                    AS held_mode,
    l.relation::regclass::text                                AS held_object
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
WHERE l.granted AND l.pid = ANY(%(pids)s) AND l.locktype = 'relation'
ORDER BY l.pid,
    array_position(ARRAY['AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock',
                         'ShareLock', 'ShareUpdateExclusiveLock', 'RowExclusiveLock',
                         'RowShareLock', 'AccessShareLock'], l.mode),
    c.relkind IN ('r', 'p') DESC;
