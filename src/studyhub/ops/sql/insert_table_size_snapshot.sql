-- Record one table's size and row estimate in ops.table_size_snapshots.
INSERT INTO ops.table_size_snapshots (captured_at, database, schema_name, table_name,
    row_estimate, total_bytes, heap_bytes, index_bytes, toast_bytes)
VALUES (%(captured_at)s, %(database)s, %(schema)s, %(table)s, %(row_estimate)s,
    %(total_bytes)s, %(heap_bytes)s, %(index_bytes)s, %(toast_bytes)s)
ON CONFLICT DO NOTHING;
