-- One look at a migration's backend %(pid)s from a second connection: every session of this
-- database waiting for a lock behind it (pg_blocking_pids: hard and soft blockers, i.e. also
-- sessions queued behind a lock it waits for), with the mode asked for and how long it has
-- waited; and the table locks the migration holds. Needs pg_monitor (the ops role) to see
-- other users' sessions.
SELECT
    'wait'                                                          AS kind,
    l.pid,
    l.mode,
    coalesce(l.relation::regclass::text, l.locktype)                AS object,
    extract(epoch FROM clock_timestamp() - l.waitstart)::float8     AS waited_s,
    extract(epoch FROM l.waitstart)::float8                         AS wait_started
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted
  AND a.datname = current_database()
  AND l.pid <> %(pid)s
  AND %(pid)s = ANY (pg_blocking_pids(l.pid))
UNION ALL
SELECT 'held', l.pid, l.mode, l.relation::regclass::text, NULL, NULL
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = %(pid)s AND l.granted AND l.locktype = 'relation'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND c.relkind IN ('r', 'p', 'm')
  AND c.relnamespace <> 'pg_catalog'::regnamespace
  AND c.relname <> 'alembic_version';  -- Alembic's bookkeeping, not the migration's
