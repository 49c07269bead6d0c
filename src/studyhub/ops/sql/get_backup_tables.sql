-- Every table whose rows a logical backup carries: ordinary tables in user schemas, leaf
-- partitions included, parents of partitioned tables and extensions' own tables excluded
-- (pg_dump leaves those to CREATE EXTENSION). Biggest first, so parallel work balances.
SELECT n.nspname AS schema, c.relname AS table
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (
        SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY pg_relation_size(c.oid) DESC, n.nspname, c.relname;
