-- Every backend on the server (client sessions, walsenders, autovacuum and background workers),
-- with how long its transaction, query and state have lasted, who blocks it, and its query fingerprint (query_id). Needs pg_monitor
-- (pg_read_all_stats) to see other roles' queries. Query text is cut to 2000 characters.
SELECT
    a.pid,
    a.datname                                              AS database,
    a.usename                                              AS role,
    coalesce(a.application_name, '')                       AS application,
    host(a.client_addr)                                    AS client_addr,
    a.backend_type,
    coalesce(a.state, '')                                  AS state,
    a.wait_event_type,
    a.wait_event,
    extract(epoch FROM now() - a.backend_start)::float8    AS backend_age_s,
    extract(epoch FROM now() - a.xact_start)::float8       AS xact_age_s,
    extract(epoch FROM now() - a.query_start)::float8      AS query_age_s,
    extract(epoch FROM now() - a.state_change)::float8     AS state_age_s,
    pg_blocking_pids(a.pid)                                AS blocked_by,
    a.query_id,
    left(a.query, 2000)                                    AS query,
    coalesce(s.ssl, false)                                 AS ssl,
    a.backend_start,
    a.pid = pg_backend_pid()                               AS is_self,
    coalesce(r.rolsuper, false)                            AS is_superuser
FROM pg_stat_activity a
LEFT JOIN pg_stat_ssl s ON s.pid = a.pid
LEFT JOIN pg_roles r ON r.oid = a.usesysid
ORDER BY a.query_start NULLS LAST, a.pid;
