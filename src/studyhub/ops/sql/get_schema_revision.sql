-- The Alembic revision(s) the database is at (empty when it was never migrated).
SELECT version_num
FROM alembic_version
ORDER BY version_num;
