-- The account and learner ids of a student.
SELECT s.user_id, s.id AS student_id
FROM students s
WHERE s.id = %(student_id)s;
