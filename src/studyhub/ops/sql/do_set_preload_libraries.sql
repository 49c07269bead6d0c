-- Write the new shared_preload_libraries list into postgresql.auto.conf; it takes effect at
-- the next restart. {libraries} is a list of literals (psycopg.sql), e.g. 'pg_stat_statements'.
ALTER SYSTEM SET shared_preload_libraries = {libraries};
