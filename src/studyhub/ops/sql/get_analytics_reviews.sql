-- Flashcard reviews for analytics: no text, no names, the day instead of the time.
SELECT
    r.student_id,
    r.flashcard_id,
    sub.code                                   AS subject,
    s.year_group,
    (r.reviewed_at AT TIME ZONE 'UTC')::date   AS review_day,
    r.rating,
    r.state,
    r.stability,
    r.difficulty,
    r.elapsed_days,
    r.scheduled_days,
    r.review_duration_ms
FROM flashcard_reviews r
JOIN students s   ON s.id = r.student_id
JOIN flashcards f ON f.student_id = r.student_id AND f.id = r.flashcard_id
JOIN subjects sub ON sub.id = f.subject_id
