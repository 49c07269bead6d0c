"""GET /reviews/sync: a student's reviews in the order the server recorded them, paged by a
cursor, never skipping a review whose transaction committed after a later one."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from studyhub.db.models import FlashcardReview
from tests.api_helpers import RunningApi, make_subject, register, running_api
from tests.conftest import connect_as

COPY_COLUMNS = [c.name for c in FlashcardReview.__table__.columns
                if c.name not in ("id", "recorded_at")]


@pytest.fixture(scope="module")
def full_profile(migrated, with_replica, with_pooler):
    return with_pooler.profile()


@pytest.fixture(scope="module")
def api(full_profile):
    with running_api(full_profile) as running:
        yield running


def _card(s, subject: str, front: str) -> str:
    r = s.post("/flashcards", json={"subject_id": subject, "front": front, "back": "b"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _review(s, card: str, at: datetime | None = None) -> str:
    body = {"rating": 3} | ({"reviewed_at": at.isoformat()} if at else {})
    r = s.post(f"/flashcards/{card}/reviews", json=body)
    assert r.status_code == 201, r.text
    return r.json()["review"]["id"]


def _sync(s, cursor: str | None = None, limit: int = 100) -> dict:
    r = s.get("/reviews/sync", params={"limit": limit} | ({"cursor": cursor} if cursor else {}))
    assert r.status_code == 200, r.text
    assert r.headers["X-StudyHub-Read-From"] == "primary"
    return r.json()


def _sync_settled(s, cursor: str | None = None, *, want: int, limit: int = 100) -> dict:
    """The feed once ``want`` rows are out: another app transaction that happened to be open
    (a probe, another test's session) holds the horizon back for as long as it runs."""
    deadline = time.monotonic() + 20
    while True:
        got = _sync(s, cursor, limit)
        if len(got["items"]) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_sync_pages_in_recorded_order_including_late_offline_reviews(api: RunningApi,
                                                                     full_profile):
    subject = make_subject(full_profile)
    ada, bob = register(api), register(api)
    c1, c2 = _card(ada, subject, "one"), _card(ada, subject, "two")
    first, second = _review(ada, c1), _review(ada, c1)
    # made offline three days ago, uploaded now: a reviewed_at cursor would skip it
    offline = _review(ada, c2, datetime.now(timezone.utc) - timedelta(days=3))
    _review(bob, _card(bob, subject, "bob's"))

    page1 = _sync_settled(ada, want=2, limit=2)
    assert [r["id"] for r in page1["items"]] == [first, second] and page1["more"] is True
    page2 = _sync_settled(ada, page1["next_cursor"], want=1, limit=2)
    assert [r["id"] for r in page2["items"]] == [offline] and page2["more"] is False
    assert page2["items"][0]["reviewed_at"] < page1["items"][0]["reviewed_at"]
    empty = _sync(ada, page2["next_cursor"])
    assert empty["items"] == [] and empty["next_cursor"] == page2["next_cursor"]
    assert ada.get("/reviews/sync", params={"cursor": "nonsense"}).status_code == 422
    bobs = _sync_settled(bob, want=1)["items"]
    assert bobs != [] and {r["id"] for r in bobs}.isdisjoint({first, second, offline})


def test_a_review_committed_late_is_not_skipped_by_the_cursor(api: RunningApi, full_profile):
    subject = make_subject(full_profile)
    s = register(api)
    card, other = _card(s, subject, "race"), _card(s, subject, "other")
    seed = _review(s, other)  # the slow writer copies this row (its FK locks card "other")
    cursor = _sync_settled(s, want=1)["next_cursor"]
    slow = connect_as(full_profile, "app", autocommit=False)
    try:
        # A writer that started first and commits last: its recorded_at is older than the
        # review the API writes meanwhile.
        cols = ", ".join(COPY_COLUMNS)
        (slow_id,) = slow.execute(
            f"INSERT INTO flashcard_reviews ({cols}) SELECT {cols} FROM flashcard_reviews "
            "WHERE id = %s RETURNING id", (seed,)).fetchone()
        fast = _review(s, card)
        held = _sync(s, cursor)
        assert held["items"] == [] and held["next_cursor"] == cursor  # both held back
        slow.commit()
    finally:
        slow.close()
    got = _sync_settled(s, cursor, want=2)
    assert [r["id"] for r in got["items"]] == [str(slow_id), fast]
    assert got["items"][0]["recorded_at"] < got["items"][1]["recorded_at"]
