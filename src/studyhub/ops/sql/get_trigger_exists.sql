-- Does the table (qualified, quoted name) have a trigger of this name?
SELECT EXISTS (
    SELECT 1 FROM pg_trigger
    WHERE tgrelid = to_regclass(%(table)s) AND tgname = %(name)s
) AS exists;
