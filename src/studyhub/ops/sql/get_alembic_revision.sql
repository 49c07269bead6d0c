-- The schema revision(s) the database is at ([] when it has no alembic_version table).
SELECT coalesce(array_agg(version_num ORDER BY version_num), '{}')
FROM public.alembic_version;
