-- Row count and content checksum of one table whose column types are not all hashable
-- (see get_table_rows_and_checksum.sql), over each row's text form instead: a sum does not depend on
-- row order (a restored table is laid out differently) and, unlike XOR, duplicate rows do not
-- cancel out. hashtextextended() is the hash behind hash partitioning, so PostgreSQL keeps its
-- values stable across versions; sum(bigint) is numeric, so it cannot overflow. Row text
-- depends on TimeZone, DateStyle, IntervalStyle, extra_float_digits and bytea_output: the
-- caller pins them (CHECKSUM_SETTINGS in ops/backup/checksums.py) on both sides of the comparison.
-- ROW(t.*), not t: a table may have a column named t.
SELECT count(*) AS rows,
       coalesce(sum(hashtextextended(ROW(t.*)::text, 0)), 0)::text AS checksum
FROM ONLY {table} AS t;
