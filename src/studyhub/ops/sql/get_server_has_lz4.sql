-- Can this server compress TOASTed values with lz4 (built --with-lz4)? A restore then sets
-- default_toast_compression = lz4 for its session: several times cheaper than pglz when COPY
-- recompresses every long text value.
SELECT coalesce('lz4' = ANY(enumvals), false)
FROM pg_settings
WHERE name = 'default_toast_compression';
