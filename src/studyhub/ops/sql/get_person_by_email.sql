-- The account (and learner, if any) with this email; emails are stored lower-case.
SELECT u.id AS user_id, s.id AS student_id
FROM users u
LEFT JOIN students s ON s.user_id = u.id
WHERE u.email = lower(%(email)s);
