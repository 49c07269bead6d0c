-- Every object of the app's schemas as (kind, name, definition): what `migrate roundtrip`
-- compares before and after a downgrade. Extension-owned objects and Alembic's
-- alembic_version are left out; column positions count live columns only (a dropped column
-- leaves a hole in attnum that a re-added column must not be blamed for).
WITH nsp AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'
),
ext_objects AS (
    SELECT objid FROM pg_depend WHERE deptype = 'e'
),
rels AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relacl
    FROM pg_class c JOIN nsp n ON n.oid = c.relnamespace
    WHERE c.oid NOT IN (SELECT objid FROM ext_objects)
      AND c.relname <> 'alembic_version'
      AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                      WHERE i.indexrelid = c.oid AND t.relname = 'alembic_version')
)
SELECT 'schema' AS kind, nspname AS name,
       pg_get_userbyid(nspowner)::text || coalesce(' acl ' || nspacl::text, '') AS definition
FROM pg_namespace WHERE oid IN (SELECT oid FROM nsp)
UNION ALL
SELECT 'extension', extname, extversion FROM pg_extension
UNION ALL
SELECT CASE relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                    WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                    ELSE 'relation ' || relkind::text END,
       nspname || '.' || relname,
       'persistence ' || relpersistence::text || coalesce(' acl ' || relacl::text, '')
       || CASE WHEN relkind IN ('v', 'm') THEN ' as ' || pg_get_viewdef(oid) ELSE '' END
FROM rels WHERE relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT 'column',
       r.nspname || '.' || r.relname || '.' || a.attname,
       'position ' || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum)
       || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE ' null' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE a.attidentity WHEN 'a' THEN ' identity always' WHEN 'd' THEN ' identity by default'
                             ELSE '' END
       || CASE a.attgenerated WHEN 's' THEN ' generated stored' ELSE '' END
       || coalesce(' collate ' || nullif(co.collname, 'default'), '')
FROM rels r
JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
WHERE r.relkind IN ('r', 'p', 'v', 'm')
UNION ALL
SELECT 'constraint',
       r.nspname || '.' || r.relname || '.' || con.conname,
       pg_get_constraintdef(con.oid) || CASE WHEN con.convalidated THEN '' ELSE ' (not validated)' END
FROM pg_constraint con JOIN rels r ON r.oid = con.conrelid
UNION ALL
SELECT 'index', r.nspname || '.' || r.relname,
       pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (INVALID)' END
FROM pg_index i JOIN rels r ON r.oid = i.indexrelid
UNION ALL
SELECT 'trigger', r.nspname || '.' || r.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid
WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       md5(pg_get_functiondef(p.oid))
FROM pg_proc p JOIN nsp n ON n.oid = p.pronamespace
WHERE p.oid NOT IN (SELECT objid FROM ext_objects) AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'type', n.nspname || '.' || t.typname,
       CASE t.typtype WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                                  FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
                      WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod)
                      ELSE 'type ' || t.typtype::text END
FROM pg_type t JOIN nsp n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd') AND t.oid NOT IN (SELECT objid FROM ext_objects)
ORDER BY 1, 2;
