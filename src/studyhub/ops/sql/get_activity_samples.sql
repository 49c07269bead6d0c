-- The sessions sampled in the snapshots of a time range (one snapshot: from = to), with the
-- ages of their transaction, query and state at that moment and their statement's normalised
-- text (NULL when only its query id is known). ``only_waits``: just the snapshots in which
-- someone waited for a lock (incident summaries).
SELECT
    s.taken_at,
    s.pid,
    s.database,
    s.role,
    coalesce(s.application, '')                            AS application,
    host(s.client_addr)                                    AS client_addr,
    s.backend_type,
    coalesce(s.state, '')                                  AS state,
    s.wait_event_type,
    s.wait_event,
    extract(epoch FROM s.taken_at - s.xact_start)::float8  AS xact_age_s,
    extract(epoch FROM s.taken_at - s.query_start)::float8 AS query_age_s,
    extract(epoch FROM s.taken_at - s.state_change)::float8 AS state_age_s,
    s.xact_start,
    s.query_start,
    coalesce(s.blocked_by, '{}')                           AS blocked_by,
    s.queryid                                              AS query_id,
    f.query,
    s.lock_type,
    s.lock_mode,
    s.lock_object,
    s.held_mode,
    s.held_object
FROM ops.activity_samples s
LEFT JOIN ops.statement_fingerprints f ON f.queryid = s.queryid
WHERE s.taken_at BETWEEN %(from)s AND %(to)s
  AND (NOT %(only_waits)s OR s.taken_at IN (
        SELECT taken_at FROM ops.activity_snapshots
        WHERE taken_at BETWEEN %(from)s AND %(to)s AND waiting > 0))
ORDER BY s.taken_at, s.pid;
