-- Fails unless pg_stat_statements is loaded through shared_preload_libraries.
SELECT 1 FROM pg_stat_statements LIMIT 1;
