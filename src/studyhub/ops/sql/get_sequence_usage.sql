-- How far each sequence has come towards its limit, taking the owning column's type into
-- account (a bigint sequence feeding an integer column overflows at 2^31 - 1). last_value is
-- NULL when the current role may not read the sequence.
SELECT
    s.schemaname                     AS schema,
    s.sequencename                   AS sequence,
    s.last_value,
    s.increment_by,
    CASE WHEN s.increment_by > 0 THEN
        least(s.max_value, CASE t.typname WHEN 'int2' THEN 32767 WHEN 'int4' THEN 2147483647
                                          ELSE 9223372036854775807 END)
    ELSE s.min_value END             AS limit_value,
    t.typname                        AS column_type,
    d.refobjid::regclass::text       AS owned_by_table,
    att.attname                      AS owned_by_column
FROM pg_sequences s
JOIN pg_class c ON c.relname = s.sequencename
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_attribute att ON att.attrelid = d.refobjid AND att.attnum = d.refobjsubid
LEFT JOIN pg_type t ON t.oid = att.atttypid
ORDER BY 1, 2;
