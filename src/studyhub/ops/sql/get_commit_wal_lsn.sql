-- After a COMMIT on this primary: a WAL position at or past that commit's record. Run on the
-- primary (through the pooler is fine: one statement, no session state).
-- pg_current_wal_lsn() is how far WAL has been *written*; with synchronous_commit = on or local
-- the commit record was flushed before COMMIT returned, so it is at or below that. With
-- synchronous_commit = off (set for a role or database), COMMIT returns before its record is
-- written: only the insert position, pg_current_wal_insert_lsn(), is then sure to be past it.
-- (Not used always: at a page boundary the insert position counts the next page's header, which
-- a replica's replay position does not reach until more WAL arrives.)
SELECT CASE WHEN current_setting('synchronous_commit') = 'off'
            THEN pg_current_wal_insert_lsn()
            ELSE pg_current_wal_lsn() END::text AS wal_lsn
