-- Which of these function names are VOLATILE (may have side effects: nextval, signals, dblink,
-- advisory locks, user functions that write)? EXPLAIN ANALYZE runs them for real.
SELECT DISTINCT p.proname AS function
FROM pg_proc p
WHERE p.proname = ANY(%(names)s) AND p.provolatile = 'v'
ORDER BY 1;
