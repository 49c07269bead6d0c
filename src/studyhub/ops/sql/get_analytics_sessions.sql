-- Revision sessions for analytics: the day and the length, not the clock times.
SELECT
    rs.student_id,
    sub.code                                                     AS subject,
    s.year_group,
    (rs.started_at AT TIME ZONE 'UTC')::date                     AS session_day,
    round(extract(epoch FROM rs.ended_at - rs.started_at) / 60)::integer AS duration_min,
    rs.cards_reviewed
FROM revision_sessions rs
JOIN students s        ON s.id = rs.student_id
LEFT JOIN subjects sub ON sub.id = rs.subject_id
