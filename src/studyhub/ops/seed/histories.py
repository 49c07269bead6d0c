"""Flashcard review histories computed by the real FSRS scheduler, for the seeder to reuse.

Running ``fsrs.Scheduler.review_card`` for every seeded review would cost minutes for millions
of rows, so we compute pools of complete histories once (well under a second) and give each
seeded card one of them, shifted in time. FSRS only ever looks at time *differences*, so a
history shifted as a whole is exactly what the scheduler would have produced had the reviews
happened at the shifted times (the tests replay seeded reviews through the scheduler).

Students revise in sessions: a student sits down every ``cadence`` days at about the same time
and reviews the cards that are due (learning steps of a few minutes happen within the sitting;
sometimes a due card waits for a later session). Each pool simulates one cadence, so shifting
a history by whole sessions keeps every review inside one of the student's sessions.

Fuzzing is off: the scheduler's fuzz draws from Python's global random generator, which would
make the seed non-reproducible. Ratings, skipped sessions and the order within a session come
from our own seeded generator instead.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

from fsrs import Card, Rating, Scheduler, State

US_PER_S = 1_000_000
US_PER_MINUTE = 60 * US_PER_S
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR

CADENCES_DAYS = (1, 2, 3, 4, 5, 7, 10, 14, 21, 30, 45, 60)  # days between sessions
MAX_LENGTH = 16  # most reviews of one card in a pooled history (daily cadence)
MAX_LENGTH_SPARSE = 12  # ... for sparser cadences (students with ~10 sessions in all)
HISTORIES_PER_LENGTH = 30
MAX_SPAN_DAYS = 1_000  # no history spans more than this from first to last review
SKIP_CHANCE = 0.3  # a due card is left for a later session (too many due that day)
SESSION_SPREAD_US = 25 * US_PER_MINUTE  # when in the session a card comes up first
SESSION_LENGTH_US = 60 * US_PER_MINUTE  # learning steps due later wait for the next session
_POOL_SEED = "studyhub-fsrs-pool"  # the pools are fixed; the seeder's seed picks from them

_T0 = datetime(2020, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class ReviewStep:
    """One review, relative to the start of the session of the card's first review."""

    offset_us: int
    session: int  # sessions since the first review's session
    due_offset_us: int  # the due date it set
    rating: int
    state: int  # state after the review
    stability: float
    difficulty: float
    elapsed_days: float  # since the previous review (0 for the first)
    scheduled_days: float  # from this review to the due date it set


@dataclass(frozen=True)
class ReviewHistory:
    """A card's whole review history and the card state it ends in."""

    steps: tuple[ReviewStep, ...]
    state: int
    step: int | None
    stability: float
    difficulty: float
    lapses: int

    @property
    def sessions_spanned(self) -> int:
        return self.steps[-1].session


@dataclass(frozen=True)
class HistoryPool:
    """Histories for one session cadence, by length, each list sorted by sessions spanned."""

    cadence_days: int
    by_length: dict[int, tuple[ReviewHistory, ...]]
    spans_by_length: dict[int, tuple[int, ...]]

    def pick(self, rng: random.Random, length: int, max_sessions: int) -> tuple[int, int] | None:
        """(length, position) of a random history of ``length`` reviews (or the longest shorter
        one available) spanning at most ``max_sessions`` further sessions; None if none fits."""
        if max_sessions < 0:
            return None
        for n in range(min(length, len(self.by_length)), 0, -1):
            fitting = bisect.bisect_right(self.spans_by_length[n], max_sessions)
            if fitting:
                return n, int(rng.random() * fitting)
        return None


def _choose_rating(rng: random.Random, card: Card, scheduler: Scheduler, when: datetime,
                   ease: float) -> Rating:
    """A plausible answer: forgotten more often when overdue (low retrievability) or while the
    card is still being learned; easy cards (high ``ease``) get more Good/Easy."""
    if card.state == State.Review:
        recall = scheduler.get_card_retrievability(card, when)
        p_again = min(0.5, max(0.02, 0.02 + (1.0 - recall) * 0.9 - 0.04 * ease))
    else:
        p_again = 0.24 - 0.16 * ease
    p_hard = 0.12
    p_easy = 0.05 + 0.15 * ease
    x = rng.random()
    if x < p_again:
        return Rating.Again
    if x < p_again + p_hard:
        return Rating.Hard
    if x < 1.0 - p_easy:
        return Rating.Good
    return Rating.Easy


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def _simulate(rng: random.Random, scheduler: Scheduler, cadence_us: int,
              length: int) -> ReviewHistory | None:
    ease = rng.random()
    card = Card(card_id=1, due=_T0)
    session = 0
    offset = int(rng.random() * SESSION_SPREAD_US)
    steps: list[ReviewStep] = []
    previous: int | None = None
    lapses = 0
    for _ in range(length):
        when = _T0 + timedelta(microseconds=offset)
        rating = _choose_rating(rng, card, scheduler, when, ease)
        if card.state == State.Review and rating == Rating.Again:
            lapses += 1
        card, _log = scheduler.review_card(card, rating, when)
        assert card.stability is not None and card.difficulty is not None
        due = _us(card.due - _T0)
        steps.append(ReviewStep(
            offset_us=offset,
            session=session,
            due_offset_us=due,
            rating=int(rating),
            state=int(card.state),
            stability=card.stability,
            difficulty=card.difficulty,
            elapsed_days=(offset - previous) / US_PER_DAY if previous is not None else 0.0,
            scheduled_days=(due - offset) / US_PER_DAY,
        ))
        previous = offset
        if due < session * cadence_us + SESSION_LENGTH_US:  # a learning step, in this sitting
            offset = due + int(rng.random() * 90 * US_PER_S)
            continue
        # the first session on the due day (or after it), unless the card waits longer
        session = max(session + 1, -(-(due - 12 * US_PER_HOUR) // cadence_us))
        while rng.random() < SKIP_CHANCE:
            session += 1
        offset = session * cadence_us + int(rng.random() * SESSION_SPREAD_US)
        if offset > MAX_SPAN_DAYS * US_PER_DAY:
            return None
    return ReviewHistory(
        steps=tuple(steps),
        state=int(card.state),
        step=card.step,
        stability=card.stability,
        difficulty=card.difficulty,
        lapses=lapses,
    )


@cache
def history_pool(cadence_days: int) -> HistoryPool:
    """HISTORIES_PER_LENGTH histories of every length from 1 up for one cadence."""
    if cadence_days not in CADENCES_DAYS:
        raise ValueError(f"no history pool for a {cadence_days}-day cadence")
    rng = random.Random(f"{_POOL_SEED}:{cadence_days}")
    scheduler = Scheduler(enable_fuzzing=False)
    cadence_us = cadence_days * US_PER_DAY
    by_length: dict[int, tuple[ReviewHistory, ...]] = {}
    longest = MAX_LENGTH if cadence_days == 1 else MAX_LENGTH_SPARSE
    for length in range(1, longest + 1):
        found: list[ReviewHistory] = []
        attempts = 0
        while len(found) < HISTORIES_PER_LENGTH and attempts < HISTORIES_PER_LENGTH * 20:
            attempts += 1
            history = _simulate(rng, scheduler, cadence_us, length)
            if history is not None:
                found.append(history)
        found.sort(key=lambda h: h.sessions_spanned)
        by_length[length] = tuple(found)
    return HistoryPool(
        cadence_days=cadence_days,
        by_length=by_length,
        spans_by_length={n: tuple(h.sessions_spanned for h in hs) for n, hs in by_length.items()},
    )
