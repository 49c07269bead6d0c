-- Forget size snapshots older than the retention period (both tables).
WITH gone AS (
    DELETE FROM ops.table_size_snapshots WHERE captured_at < now() - %(keep)s::interval
)
DELETE FROM ops.database_size_snapshots WHERE captured_at < now() - %(keep)s::interval;
