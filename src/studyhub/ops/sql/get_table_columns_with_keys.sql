-- Columns of every user table in order: number, name, type, NOT NULL, primary-key position.
SELECT
    n.nspname                               AS schema,
    c.relname                               AS table,
    a.attnum                                AS attnum,
    a.attname::text                         AS column,
    format_type(a.atttypid, a.atttypmod)    AS type,
    a.attnotnull                            AS not_null,
    array_position(pk.conkey, a.attnum)     AS pk_position
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT FROM pg_depend d                 -- not an extension's table
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY n.nspname, c.relname, a.attnum;
