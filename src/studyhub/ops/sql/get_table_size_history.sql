-- Each table's size and row estimate at each stored snapshot since %(since)s, oldest first.
SELECT captured_at, schema_name AS schema, table_name AS table, row_estimate, total_bytes,
       heap_bytes, index_bytes, toast_bytes
FROM ops.table_size_snapshots
WHERE database = current_database() AND captured_at >= %(since)s
ORDER BY captured_at, schema_name, table_name;
