-- May the current role see every role's sessions and statements (pg_stat_activity's state and
-- query, pg_stat_statements' text, pg_stat_replication's positions)? That takes the privileges
-- of pg_read_all_stats (pg_monitor includes it; superusers have it).
SELECT current_user AS role,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats;
