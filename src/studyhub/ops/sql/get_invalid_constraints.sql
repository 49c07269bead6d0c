-- Constraints added NOT VALID and never validated: the database does not vouch for old rows.
SELECT
    n.nspname AS schema, c.relname AS table, k.conname AS constraint, k.contype AS type
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT k.convalidated
ORDER BY 1, 2, 3;
