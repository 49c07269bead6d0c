-- When this database's sizes were last stored.
SELECT max(captured_at) FROM ops.database_size_snapshots WHERE database = current_database();
