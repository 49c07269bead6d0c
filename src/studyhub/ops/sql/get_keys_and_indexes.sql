-- Primary keys, unique constraints, foreign keys and the other indexes of the given tables, by
-- name (kind: p, u, f, or i for an index that backs no constraint).
SELECT t.relname AS table_name, con.conname AS name, con.contype::text AS kind
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
WHERE con.conrelid = ANY (%(tables)s::regclass[])
  AND con.contype IN ('p', 'u', 'f')
UNION ALL
SELECT t.relname, i.relname, 'i'
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
WHERE x.indrelid = ANY (%(tables)s::regclass[])
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint con
      WHERE con.conindid = x.indexrelid AND con.conrelid = x.indrelid
        AND con.contype IN ('p', 'u', 'x'))
ORDER BY 1, 2;
