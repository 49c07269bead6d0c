-- The names of every VOLATILE function (a column default calling one is computed for each
-- existing row, so ADD COLUMN … DEFAULT rewrites the table): what `migrate lint --profile`
-- asks pg_proc instead of its offline list.
SELECT DISTINCT proname
FROM pg_proc
WHERE provolatile = 'v';
