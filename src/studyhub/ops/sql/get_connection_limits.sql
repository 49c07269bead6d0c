-- How many connections the server allows, and how many are reserved for superusers.
SELECT
    current_setting('max_connections')::int                     AS max_connections,
    current_setting('superuser_reserved_connections')::int      AS superuser_reserved,
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS client_connections;
