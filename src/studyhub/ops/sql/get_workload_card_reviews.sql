-- Rehearsal workload, shaped like GET /flashcards/{id}/reviews: a card's review history.
SELECT id, rating, reviewed_at, state, due
FROM flashcard_reviews
WHERE student_id = %(student_id)s AND flashcard_id = %(card_id)s
ORDER BY reviewed_at DESC
LIMIT 50;
