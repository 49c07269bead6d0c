-- Record the database's size in ops.database_size_snapshots.
INSERT INTO ops.database_size_snapshots (captured_at, database, database_bytes)
VALUES (%(captured_at)s, %(database)s, %(database_bytes)s)
ON CONFLICT DO NOTHING;
