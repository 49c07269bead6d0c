-- Does the table (qualified, quoted name) have a constraint of this name?
SELECT EXISTS (
    SELECT 1 FROM pg_constraint
    WHERE conrelid = to_regclass(%(table)s) AND conname = %(name)s
) AS exists;
