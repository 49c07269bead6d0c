-- Foreign keys of other tables that reference one of the given tables.
SELECT con.conrelid::regclass::text AS table_name, con.conname AS name
FROM pg_constraint con
WHERE con.contype = 'f'
  AND con.confrelid = ANY (%(tables)s::regclass[])
  AND NOT con.conrelid = ANY (%(tables)s::regclass[])
ORDER BY 1, 2;
