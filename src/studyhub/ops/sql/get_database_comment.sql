-- The comment on a database (COMMENT ON DATABASE), or NULL; a restore marks its staging
-- database with it (which set, how far it got).
SELECT shobj_description(oid, 'pg_database') AS comment
FROM pg_database
WHERE datname = %(name)s;
