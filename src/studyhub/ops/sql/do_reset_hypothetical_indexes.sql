-- Forget this session's hypothetical indexes.
SELECT hypopg_reset();
