-- Does the table itself (ONLY: not its children) hold any row? ({table} is composed with
-- psycopg.sql.) A resumed restore skips a table that has rows: each table's data is loaded in
-- one transaction, so it is there completely or not at all.
SELECT EXISTS (SELECT 1 FROM ONLY {table}) AS has_rows;
