-- Every foreign key between user tables: the referencing and referenced columns as attribute
-- numbers in key order (named with get_table_columns_with_keys) and the ON DELETE action
-- (a: no action, r: restrict, c: cascade, n: set null, d: set default). Partition clones are
-- left out.
SELECT
    c.conname       AS constraint_name,
    cn.nspname      AS child_schema,
    cc.relname      AS child_table,
    c.conkey        AS child_attnums,
    pn.nspname      AS parent_schema,
    pc.relname      AS parent_table,
    c.confkey       AS parent_attnums,
    c.confdeltype::text AS on_delete
FROM pg_constraint c
JOIN pg_class cc     ON cc.oid = c.conrelid
JOIN pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_class pc     ON pc.oid = c.confrelid
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f'
  AND c.conparentid = 0
  AND cn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY cn.nspname, cc.relname, c.conname;
