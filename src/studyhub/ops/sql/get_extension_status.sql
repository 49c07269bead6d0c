-- Whether an extension is installed in this database, available on the server, and (for
-- pg_stat_statements) preloaded.
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = %(name)s)            AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %(name)s)    AS available,
    %(name)s = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')) AS preloaded;
