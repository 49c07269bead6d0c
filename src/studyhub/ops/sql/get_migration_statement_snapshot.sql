-- Asked on the migration's own connection before and after each statement it runs (so the
-- migration's uncommitted catalog changes are visible): where the WAL is, the database's size
-- on disk, each table's file node (a new one = the table was rewritten), planner row estimate,
-- size from relpages, rows updated so far (flushed + this backend's pending counts), and the
-- relation locks this backend holds. (The WAL insert position: the write position stays put
-- while an open transaction's WAL sits in the buffers.) Takes no lock on any table.
SELECT
    pg_current_wal_insert_lsn()::text                               AS wal_lsn,
    pg_database_size(current_database())                            AS database_bytes,
    coalesce((
        SELECT json_agg(json_build_array(
                   c.oid, c.oid::regclass::text, c.relfilenode, greatest(c.reltuples, 0)::bigint,
                   c.relpages::bigint * current_setting('block_size')::bigint,
                   pg_stat_get_tuples_updated(c.oid) + pg_stat_get_xact_tuples_updated(c.oid)))
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'm')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%'), '[]')                AS tables,
    coalesce((
        SELECT json_agg(json_build_array(l.relation::regclass::text, l.mode))
          FROM pg_locks l
          JOIN pg_class c ON c.oid = l.relation
         WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation'
           AND c.relkind IN ('r', 'p', 'm')
           AND c.relnamespace <> 'pg_catalog'::regnamespace
           AND c.relname <> 'alembic_version'), '[]')                    AS locks;
