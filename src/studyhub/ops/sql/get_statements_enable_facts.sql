-- What enabling pg_stat_statements in this database takes, asked as the administrator:
-- is the extension installed here and available on the server, is the library in the running
-- shared_preload_libraries (NULL when this role may not read that setting), may this role
-- CREATE an untrusted extension (superuser) and ALTER SYSTEM the preload list; does the
-- profile's ops role exist (it gets EXECUTE on the reset function).
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')          AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements')  AS available,
    CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
         THEN current_setting('shared_preload_libraries') END                         AS preload_libraries,
    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)                      AS superuser,
    has_parameter_privilege('shared_preload_libraries', 'ALTER SYSTEM')               AS may_alter_system,
    current_user                                                                      AS role,
    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(ops_user)s)                      AS ops_exists;
