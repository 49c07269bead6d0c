-- How many people were erased in each month and how many rows went with them (counts only:
-- no ids, no pseudonyms), oldest month first.
SELECT date_trunc('month', erased_at)::date  AS month,
       count(*)::bigint                      AS erasures,
       sum(rows_deleted)::bigint             AS rows_deleted,
       min(erased_at)                        AS first_erased_at,
       max(erased_at)                        AS last_erased_at
FROM ops.erasure_ledger
GROUP BY 1
ORDER BY 1;
