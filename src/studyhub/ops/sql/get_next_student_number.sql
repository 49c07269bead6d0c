-- The number the seeder gives its next student for one seed: one past the highest already
-- in an email (amelia.jones+s42n17@example.org is seed 42's student 17), or 0.
SELECT coalesce(max((regexp_match(email, %(pattern)s))[1]::bigint) + 1, 0)
FROM users
WHERE strpos(email, %(tag)s) > 0;
