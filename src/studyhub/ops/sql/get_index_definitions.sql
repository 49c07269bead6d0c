-- Every index on a user table: its key columns, operator classes, method, predicate,
-- validity, size and use since the statistics were last reset.
SELECT
    n.nspname                                   AS schema,
    t.relname                                   AS table,
    i.relname                                   AS index,
    am.amname                                   AS method,
    x.indisunique                               AS is_unique,
    x.indisprimary                              AS is_primary,
    x.indisvalid                                AS is_valid,
    x.indisready                                AS is_ready,
    EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) AS backs_constraint,
    string_to_array(x.indkey::text, ' ')::int[]   AS key_attnums,
    string_to_array(x.indclass::text, ' ')::oid[] AS opclasses,
    x.indnkeyatts                               AS key_count,
    ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
          LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
          ORDER BY k.ord)                       AS columns,
    pg_get_expr(x.indpred, x.indrelid)          AS predicate,
    x.indexprs IS NOT NULL                      AS has_expressions,
    pg_get_indexdef(x.indexrelid)               AS definition,
    pg_relation_size(x.indexrelid)              AS size_bytes,
    coalesce(s.idx_scan, 0)                     AS scans
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = x.indexrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2, 3;
