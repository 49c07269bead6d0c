-- How many students the database holds (the seeder appends after them; --if-empty skips).
SELECT count(*)
FROM students;
