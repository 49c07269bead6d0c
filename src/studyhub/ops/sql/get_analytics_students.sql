-- One row per student for analytics, generalised: year group, when they joined (to_char format
-- given: month, quarter or year) and their activity as bands (given as arrays of lower bounds,
-- e.g. {0,1,10,50,200,1000} → 0, 1-9, 10-49, 50-199, 200-999, 1000+), never exact counts. No
-- name, school, birth date or time zone. Every column but the student is a quasi-identifier:
-- rows are released only in groups of at least k students (ops/anonymize.py).
WITH bounds AS (
    SELECT 'count' AS kind, lo FROM unnest(%(count_bounds)s::bigint[]) AS lo
    UNION ALL
    SELECT 'subjects', lo FROM unnest(%(subject_bounds)s::bigint[]) AS lo
), bands AS (
    SELECT kind, lo, next_lo,
           CASE WHEN next_lo IS NULL THEN lo || '+'
                WHEN next_lo = lo + 1 THEN lo::text
                ELSE lo || '-' || (next_lo - 1) END AS label
    FROM (SELECT kind, lo, lead(lo) OVER (PARTITION BY kind ORDER BY lo) AS next_lo
          FROM bounds) AS b
), activity AS (
    SELECT
        s.id AS student_id,
        s.year_group,
        s.created_at,
        (SELECT count(*) FROM student_subjects x WHERE x.student_id = s.id)  AS subjects,
        (SELECT count(*) FROM notes x WHERE x.student_id = s.id)             AS notes,
        (SELECT count(*) FROM flashcards x WHERE x.student_id = s.id)        AS flashcards,
        (SELECT count(*) FROM flashcard_reviews x WHERE x.student_id = s.id) AS reviews,
        (SELECT count(*) FROM ai_interactions x WHERE x.student_id = s.id)   AS ai_interactions
    FROM students s
)
SELECT
    a.student_id,
    a.year_group,
    to_char(a.created_at AT TIME ZONE 'UTC', %(joined_format)s) AS joined,
    (SELECT label FROM bands b WHERE b.kind = 'subjects' AND a.subjects >= b.lo
        AND (b.next_lo IS NULL OR a.subjects < b.next_lo))                  AS subjects_band,
    (SELECT label FROM bands b WHERE b.kind = 'count' AND a.notes >= b.lo
        AND (b.next_lo IS NULL OR a.notes < b.next_lo))                     AS notes_band,
    (SELECT label FROM bands b WHERE b.kind = 'count' AND a.flashcards >= b.lo
        AND (b.next_lo IS NULL OR a.flashcards < b.next_lo))                AS flashcards_band,
    (SELECT label FROM bands b WHERE b.kind = 'count' AND a.reviews >= b.lo
        AND (b.next_lo IS NULL OR a.reviews < b.next_lo))                   AS reviews_band,
    (SELECT label FROM bands b WHERE b.kind = 'count' AND a.ai_interactions >= b.lo
        AND (b.next_lo IS NULL OR a.ai_interactions < b.next_lo))           AS ai_interactions_band
FROM activity a
