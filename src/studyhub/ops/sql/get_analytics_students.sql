-- One row per student for analytics: year group, month joined and activity counts; no name,
-- school, birth date or time zone.
SELECT
    s.id                                                        AS student_id,
    s.year_group,
    to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM')         AS joined_month,
    (SELECT count(*) FROM student_subjects x WHERE x.student_id = s.id)  AS subjects,
    (SELECT count(*) FROM notes x WHERE x.student_id = s.id)             AS notes,
    (SELECT count(*) FROM flashcards x WHERE x.student_id = s.id)        AS flashcards,
    (SELECT count(*) FROM flashcard_reviews x WHERE x.student_id = s.id) AS reviews,
    (SELECT count(*) FROM ai_interactions x WHERE x.student_id = s.id)   AS ai_interactions
FROM students s
