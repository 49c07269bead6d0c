-- Whether an extension is installed in this database and available on the server.
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = %(name)s)            AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %(name)s)    AS available;
