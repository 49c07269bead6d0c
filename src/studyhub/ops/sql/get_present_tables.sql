-- Which of the given tables exist in the public schema (a fork or restore may predate some).
SELECT t.name
FROM unnest(%s::text[]) AS t(name)
WHERE to_regclass(format('public.%%I', t.name)) IS NOT NULL;
