-- Record one restore drill of this database's backups (failed ones too) in ops.backup_drills.
INSERT INTO ops.backup_drills (drilled_at, profile, database, target, set_name, set_created_at,
    ok, duration_s, tables, rows, problems)
VALUES (%(drilled_at)s, %(profile)s, %(database)s, %(target)s, %(set_name)s, %(set_created_at)s,
    %(ok)s, %(duration_s)s, %(tables)s, %(rows)s, %(problems)s)
RETURNING id;
