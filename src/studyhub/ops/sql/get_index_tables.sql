-- Every index of the user schemas with the table it belongs to (names schema-qualified
-- outside public): a DROP INDEX or ALTER INDEX names no table, `migrate plan` needs it.
SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END
           AS index,
       CASE WHEN tn.nspname = 'public' THEN t.relname ELSE tn.nspname || '.' || t.relname END
           AS table
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema');
