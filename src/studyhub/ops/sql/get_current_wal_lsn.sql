-- Where the primary's WAL is now: a write committed before this call is at or below it.
-- Run on the primary (through the pooler is fine: one statement, no session state).
SELECT pg_current_wal_lsn()::text AS wal_lsn
