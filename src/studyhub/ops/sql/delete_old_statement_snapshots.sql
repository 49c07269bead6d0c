-- Forget snapshots older than the retention period.
DELETE FROM ops.statement_snapshots WHERE captured_at < now() - %(keep)s::interval;
