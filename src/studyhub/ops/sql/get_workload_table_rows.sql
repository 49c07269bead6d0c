-- The planner's row estimate of the tables the synthetic app workload samples.
SELECT c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_class c
WHERE c.relname IN ('flashcards', 'notes') AND c.relnamespace = 'public'::regnamespace;
