-- Every foreign key between user tables, with its columns in key order, its ON DELETE action
-- (a: no action, r: restrict, c: cascade, n: set null, d: set default) and whether any of the
-- referencing columns may be NULL. Constraints cloned onto partitions are left out.
SELECT
    c.conname                                   AS constraint_name,
    cn.nspname                                  AS child_schema,
    cc.relname                                  AS child_table,
    array_agg(ca.attname::text ORDER BY k.ord)  AS child_columns,
    pn.nspname                                  AS parent_schema,
    pc.relname                                  AS parent_table,
    array_agg(pa.attname::text ORDER BY k.ord)  AS parent_columns,
    c.confdeltype::text                         AS on_delete,
    bool_or(NOT ca.attnotnull)                  AS nullable
FROM pg_constraint c
JOIN pg_class cc     ON cc.oid = c.conrelid
JOIN pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_class pc     ON pc.oid = c.confrelid
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(child_attnum, parent_attnum, ord)
JOIN pg_attribute ca ON ca.attrelid = c.conrelid  AND ca.attnum = k.child_attnum
JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.parent_attnum
WHERE c.contype = 'f'
  AND c.conparentid = 0
  AND cn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND cn.nspname NOT LIKE 'pg_toast%'
GROUP BY c.oid, c.conname, cn.nspname, cc.relname, pn.nspname, pc.relname, c.confdeltype
ORDER BY cn.nspname, cc.relname, c.conname;
