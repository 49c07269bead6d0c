-- AI tutor usage for analytics: model, tokens and latency per day; never the prompt or answer.
SELECT
    ai.student_id,
    sub.code                                   AS subject,
    s.year_group,
    ai.model,
    (ai.created_at AT TIME ZONE 'UTC')::date   AS day,
    ai.prompt_tokens,
    ai.completion_tokens,
    ai.latency_ms
FROM ai_interactions ai
JOIN students s        ON s.id = ai.student_id
LEFT JOIN subjects sub ON sub.id = ai.subject_id
