-- The newest restore drills of one profile's database, newest first.
SELECT id, drilled_at, profile, database, target, set_name, set_created_at, ok, duration_s,
       tables, rows, problems
FROM ops.backup_drills
WHERE profile = %(profile)s AND database = %(database)s
ORDER BY drilled_at DESC, id DESC
LIMIT %(limit)s;
