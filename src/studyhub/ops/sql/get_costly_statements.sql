-- The statements of this database that took the most execution time, with their normalized
-- text (only statements whose text the current role may see).
SELECT s.queryid, sum(s.calls)::bigint AS calls, sum(s.total_exec_time)::float8 AS total_exec_ms,
       min(s.query) AS query
FROM pg_stat_statements s
JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database()
  AND s.query NOT LIKE '<insufficient privilege>'
GROUP BY s.queryid
HAVING sum(s.calls) >= %(min_calls)s
ORDER BY sum(s.total_exec_time) DESC
LIMIT %(limit)s;
