"""Spaced repetition with FSRS-6 (the ``fsrs`` package): a flashcards row ↔ ``fsrs.Card``.

The row stores exactly fsrs's card state (state, step, stability, difficulty, due,
last_review), so a review is ``Scheduler.review_card`` on the stored card at the review time;
reps and lapses are our own counters (a lapse: *Again* on a card in the Review state).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from fsrs import Card, Rating, Scheduler, State

SECONDS_PER_DAY = 86_400.0


def card_from_row(row: Mapping[str, Any]) -> Card:
    return Card(
        card_id=0,  # fsrs's id is not ours; the scheduler does not use it
        state=State(row["state"]),
        step=row["step"],
        stability=row["stability"],
        difficulty=row["difficulty"],
        due=row["due"].astimezone(timezone.utc),
        last_review=row["last_review"].astimezone(timezone.utc) if row["last_review"] else None,
    )


@dataclass(frozen=True)
class ScheduledReview:
    """A review's outcome: the card's new columns and the flashcard_reviews row."""

    state: int
    step: int | None
    stability: float
    difficulty: float
    due: datetime
    last_review: datetime
    reps: int
    lapses: int
    elapsed_days: float
    scheduled_days: float


def review(scheduler: Scheduler, row: Mapping[str, Any], rating: int, reviewed_at: datetime,
           duration_ms: int | None = None) -> ScheduledReview:
    """Apply ``rating`` (1–4) at ``reviewed_at`` (UTC) to the card stored in ``row``."""
    card = card_from_row(row)
    new, _log = scheduler.review_card(card, Rating(rating), review_datetime=reviewed_at,
                                      review_duration=duration_ms)
    assert new.stability is not None and new.difficulty is not None
    elapsed = ((reviewed_at - card.last_review).total_seconds() / SECONDS_PER_DAY
               if card.last_review else 0.0)
    lapse = rating == Rating.Again and card.state == State.Review
    return ScheduledReview(
        state=int(new.state),
        step=new.step,
        stability=new.stability,
        difficulty=new.difficulty,
        due=new.due,
        last_review=reviewed_at,
        reps=row["reps"] + 1,
        lapses=row["lapses"] + (1 if lapse else 0),
        elapsed_days=max(0.0, elapsed),
        scheduled_days=max(0.0, (new.due - reviewed_at).total_seconds() / SECONDS_PER_DAY),
    )
