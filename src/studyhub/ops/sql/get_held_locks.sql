-- The strongest relation lock each given backend holds (to show what a blocker is holding).
SELECT DISTINCT ON (l.pid)
    l.pid,
    l.mode                                                    AS held_mode,
    CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text ELSE l.locktype END AS held_object
FROM pg_locks l
WHERE l.granted AND l.pid = ANY(%(pids)s) AND l.locktype = 'relation'
ORDER BY l.pid,
    array_position(ARRAY['AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock',
                         'ShareLock', 'ShareUpdateExclusiveLock', 'RowExclusiveLock',
                         'RowShareLock', 'AccessShareLock'], l.mode);
