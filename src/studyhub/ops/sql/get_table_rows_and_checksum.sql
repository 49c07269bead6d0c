-- Row count and content checksum of one table ({table} is composed with psycopg.sql).
-- The checksum is the sum of a 64-bit hash of each row: a sum does not depend on row order (a
-- restored table is laid out differently) and, unlike XOR, duplicate rows do not cancel out;
-- sum(bigint) is numeric, so it cannot overflow. hash_record_extended() combines each column's
-- own extended hash function -- the functions behind hash partitioning, whose values
-- PostgreSQL keeps stable across versions -- on the stored values, with no text conversion:
-- about 5x cheaper than hashing the row's text. Values that compare equal hash equal (numeric
-- 1.0 and 1.00, float 0 and -0). Tables with a column type that has no hash function (json,
-- point, xml ...) fall back to get_table_rows_and_text_checksum.sql.
SELECT count(*) AS rows,
       coalesce(sum(hash_record_extended(ROW(t.*), 0)), 0)::text AS checksum
FROM ONLY {table} AS t;
