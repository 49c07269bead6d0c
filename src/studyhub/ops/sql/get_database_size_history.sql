-- This database's size at each stored snapshot since %(since)s, oldest first.
SELECT captured_at, database_bytes
FROM ops.database_size_snapshots
WHERE database = current_database() AND captured_at >= %(since)s
ORDER BY captured_at;
