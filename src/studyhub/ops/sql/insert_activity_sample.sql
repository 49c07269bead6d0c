-- One activity sample in one statement (ops role, pg_monitor): a snapshot row (client sessions
-- by state, lock waits, root blockers, the oldest transaction), one row per session that was
-- doing something or blocks someone, and the normalised text pg_stat_statements keeps for
-- query ids not seen before. Cheap by construction:
-- - pg_blocking_pids runs only for sessions waiting on a lock (wait_event_type 'Lock');
-- - pg_locks is read only when someone waits (a one-time filter), once;
-- - pg_stat_statements (which reads its query text file) only when a sampled query id has no
--   fingerprint yet;
-- - known fingerprints get last_seen refreshed at most hourly.
-- pg_stat_activity.query is never read. Text pg_stat_statements did not normalise (utility
-- statements such as SET or ALTER ROLE keep their literals in PostgreSQL 15, and anything with
-- a quote or a dollar quote left) is stored as NULL: the query id alone.
WITH a AS MATERIALIZED (
    SELECT
        pid, datname, usename, application_name, client_addr, backend_type, state,
        wait_event_type, wait_event, xact_start, query_start, state_change, query_id,
        CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid()
),
t AS (SELECT coalesce(%(now)s::timestamptz, now()) AS taken_at),
blockers AS MATERIALIZED (
    SELECT DISTINCT unnest(blocked_by) AS pid FROM a WHERE cardinality(blocked_by) > 0
),
keep AS MATERIALIZED (
    SELECT a.*
    FROM a
    WHERE (a.backend_type IN ('client backend', 'autovacuum worker')
           AND coalesce(a.state, 'idle') <> 'idle')
       OR cardinality(a.blocked_by) > 0
       OR a.pid IN (SELECT pid FROM blockers)
),
lk AS MATERIALIZED (
    SELECT l.pid, l.granted, l.locktype, l.mode, l.relation, l.database, l.transactionid,
           l.virtualxid, l.classid, l.objid
    FROM pg_locks l
    WHERE EXISTS (SELECT FROM blockers)  -- one-time filter: pg_locks only when someone waits
      AND l.pid IS NOT NULL
      AND (NOT l.granted OR l.pid IN (SELECT pid FROM blockers))
),
named AS (
    SELECT lk.*,
           CASE WHEN lk.relation IS NULL THEN NULL
                WHEN lk.database IN (0, (SELECT oid FROM pg_database
                                         WHERE datname = current_database()))
                    THEN lk.relation::regclass::text
                ELSE 'relation ' || lk.relation || ' of database '
                     || coalesce((SELECT datname FROM pg_database WHERE oid = lk.database),
                                 lk.database::text) END AS relname
    FROM lk
),
waits AS (
    SELECT DISTINCT ON (pid) pid, locktype, mode,
           CASE WHEN locktype = 'tuple' THEN 'a row of ' || relname
                WHEN relname IS NOT NULL THEN relname
                WHEN locktype = 'transactionid' THEN 'transaction ' || transactionid::text
                WHEN locktype = 'virtualxid' THEN 'virtual transaction ' || virtualxid
                WHEN locktype = 'advisory' THEN 'advisory ' || classid::text || ':' || objid::text
                ELSE locktype END AS object
    FROM named
    WHERE NOT granted
    ORDER BY pid
),
held AS (
    SELECT DISTINCT ON (pid) pid, mode, relname
    FROM named
    WHERE granted AND locktype = 'relation'
    ORDER BY pid,
        array_position(ARRAY['AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock',
                             'ShareLock', 'ShareUpdateExclusiveLock', 'RowExclusiveLock',
                             'RowShareLock', 'AccessShareLock'], mode),
        relname LIKE 'pg\_%%', relname
),
snap AS (
    INSERT INTO ops.activity_snapshots
        (taken_at, max_connections, sessions, active, idle, idle_in_transaction, other,
         waiting, blocked_chains, sampled, longest_transaction_s)
    SELECT
        (SELECT taken_at FROM t),
        current_setting('max_connections')::int,
        count(*) FILTER (WHERE c.backend_type = 'client backend'),
        count(*) FILTER (WHERE c.backend_type = 'client backend' AND c.state = 'active'),
        count(*) FILTER (WHERE c.backend_type = 'client backend' AND c.state = 'idle'),
        count(*) FILTER (WHERE c.backend_type = 'client backend'
                         AND c.state LIKE 'idle in transaction%%'),
        count(*) FILTER (WHERE c.backend_type = 'client backend'
                         AND coalesce(c.state, '') NOT IN ('active', 'idle')
                         AND coalesce(c.state, '') NOT LIKE 'idle in transaction%%'),
        count(*) FILTER (WHERE cardinality(c.blocked_by) > 0),
        (SELECT count(*) FROM blockers b
         WHERE NOT EXISTS (SELECT FROM a w WHERE w.pid = b.pid AND cardinality(w.blocked_by) > 0)),
        (SELECT count(*) FROM keep),
        extract(epoch FROM max((SELECT taken_at FROM t) - c.xact_start)
                FILTER (WHERE c.backend_type = 'client backend'))::float8
    FROM a c
    RETURNING *
),
samples AS (
    INSERT INTO ops.activity_samples
        (taken_at, pid, database, role, application, client_addr, backend_type, state,
         wait_event_type, wait_event, xact_start, query_start, state_change, queryid,
         blocked_by, lock_type, lock_mode, lock_object, held_mode, held_object)
    SELECT s.taken_at, k.pid, k.datname, k.usename, nullif(k.application_name, ''),
           k.client_addr, k.backend_type, k.state, k.wait_event_type, k.wait_event,
           k.xact_start, k.query_start, k.state_change, k.query_id,
           nullif(k.blocked_by, '{}'), w.locktype, w.mode, w.object, h.mode, h.relname
    FROM snap s
    CROSS JOIN keep k
    LEFT JOIN waits w ON w.pid = k.pid
    LEFT JOIN held h ON h.pid = k.pid
    RETURNING queryid
),
ids AS (
    SELECT DISTINCT k.query_id AS queryid FROM keep k WHERE k.query_id IS NOT NULL
),
unknown AS MATERIALIZED (
    SELECT i.queryid FROM ids i
    WHERE NOT EXISTS (SELECT FROM ops.statement_fingerprints f
                      WHERE f.queryid = i.queryid
                        AND (f.query IS NOT NULL
                             OR f.last_seen > (SELECT taken_at FROM t) - interval '1 minute'))
),
-- pg_stat_statements: begin (where it is not usable, take_sample runs this statement with
-- the lines down to its "end" replaced by: texts AS (SELECT NULL::bigint, NULL::text WHERE false))
texts AS (
    SELECT DISTINCT ON (p.queryid) p.queryid, p.query
    FROM pg_stat_statements p
    WHERE EXISTS (SELECT FROM unknown)  -- one-time filter: read it only for new query ids
      AND p.queryid IN (SELECT queryid FROM unknown)
    ORDER BY p.queryid
),
-- pg_stat_statements: end
new_fingerprints AS (
    INSERT INTO ops.statement_fingerprints AS f (queryid, query, first_seen, last_seen)
    SELECT u.queryid,
           CASE WHEN x.query ~* '^\s*(/\*.*?\*/\s*)*\(*\s*(select|insert|update|delete|merge|with|values|table)\M'
                 AND x.query !~ ''''
                 AND x.query !~ '\$[A-Za-z_]*\$'
                THEN left(x.query, 4000) END,
           t.taken_at, t.taken_at
    FROM unknown u CROSS JOIN t
    LEFT JOIN texts x ON x.queryid = u.queryid
    ON CONFLICT (queryid) DO UPDATE
        SET query = coalesce(f.query, excluded.query), last_seen = excluded.last_seen
    RETURNING queryid
),
seen AS (
    UPDATE ops.statement_fingerprints f
    SET last_seen = (SELECT taken_at FROM t)
    WHERE f.queryid IN (SELECT queryid FROM ids)
      AND f.query IS NOT NULL
      AND f.last_seen < (SELECT taken_at FROM t) - interval '1 hour'
    RETURNING queryid
)
SELECT s.taken_at, s.sessions, s.active, s.idle, s.idle_in_transaction, s.other, s.waiting,
       s.longest_transaction_s, s.blocked_chains, s.sampled,
       (SELECT count(*) FROM new_fingerprints)::int AS new_fingerprints
FROM snap s;
