-- ALTER ROLE / ALTER DATABASE … SET of the given settings: they win over the server's own value
-- in the sessions they match (role NULL: every role; database NULL: every database).
SELECT r.rolname AS role, d.datname AS database,
       split_part(c.item, '=', 1) AS name,
       substr(c.item, strpos(c.item, '=') + 1) AS setting
FROM pg_db_role_setting s
LEFT JOIN pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_database d ON d.oid = s.setdatabase
CROSS JOIN LATERAL unnest(s.setconfig) AS c(item)
WHERE split_part(c.item, '=', 1) = ANY(%(names)s)
ORDER BY r.rolname NULLS FIRST, d.datname NULLS FIRST, 3;
