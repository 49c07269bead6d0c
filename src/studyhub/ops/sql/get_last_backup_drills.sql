-- The newest restore drill of one profile's database ('last') and its newest successful one
-- ('last_ok'; the same drill when the last one passed). No row: never drilled.
(SELECT 'last' AS which, id, drilled_at, profile, database, target, set_name, set_created_at,
        ok, duration_s, tables, rows, problems
 FROM ops.backup_drills
 WHERE profile = %(profile)s AND database = %(database)s
 ORDER BY drilled_at DESC, id DESC
 LIMIT 1)
UNION ALL
(SELECT 'last_ok', id, drilled_at, profile, database, target, set_name, set_created_at,
        ok, duration_s, tables, rows, problems
 FROM ops.backup_drills
 WHERE profile = %(profile)s AND database = %(database)s AND ok
 ORDER BY drilled_at DESC, id DESC
 LIMIT 1);
