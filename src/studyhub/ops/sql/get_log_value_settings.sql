-- The settings that decide whether the server log copies data values into itself (DETAIL lines
-- with key values and failing rows, STATEMENT lines and logged statement texts with literals,
-- bound parameters, parse trees, auto_explain plans): health.LOG_VALUE_SETTINGS. Readable with
-- pg_monitor (pg_read_all_settings); auto_explain.* exists only where the module is loaded.
SELECT name, setting, source, sourcefile
FROM pg_settings
WHERE name = ANY(%(names)s)
ORDER BY name;
