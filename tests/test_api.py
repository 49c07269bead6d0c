"""The StudyHub API end to end over HTTP, on primary + PgBouncer + replica: accounts, isolation
between students, input validation, notes, flashcards with FSRS, sessions, AI log."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from fsrs import Card, Rating, Scheduler, State

from tests.api_helpers import (
    REGISTRATION_ACCEPTED,
    RunningApi,
    make_subject,
    register,
    running_api,
)
from tests.conftest import connect_as


@pytest.fixture(scope="module")
def full_profile(migrated, with_replica, with_pooler):
    return with_pooler.profile()


@pytest.fixture(scope="module")
def api(full_profile):
    # Fuzzing off so a review's due date can be compared exactly with fsrs's own result.
    with running_api(full_profile, fsrs_fuzzing=False) as running:
        yield running


@pytest.fixture(scope="module")
def subject(full_profile) -> str:
    return make_subject(full_profile)


def test_health_reports_primary_pooler_and_replica(api: RunningApi):
    # Right after start the replica may be a few bytes behind the first sample the monitor took,
    # which it reports as "lagging" until a later probe sees it replay past that point.
    h = api.wait_for(lambda h: h["status"] == "ok", "the replica to catch up")
    assert h["primary"] == {**h["primary"], "ok": True, "via": "pooler"}
    assert h["pooler"] == {"enabled": True, "ok": True, "error": None}
    assert h["replica"]["enabled"] and h["replica"]["status"] == "ok"
    assert h["replica"]["lag_s"] is not None and h["replica"]["lag_bytes"] is not None


def test_register_login_and_me(api: RunningApi):
    s = register(api, "Ada Lovelace")
    me = s.get("/me")
    assert me.status_code == 200
    assert me.json()["full_name"] == "Ada Lovelace" and me.json()["email"] == s.email
    with api.client() as c:
        ok = c.post("/auth/token", json={"email": s.email.upper(), "password": s.password})
        assert ok.status_code == 200 and ok.json()["student_id"] == s.student_id
        bad = c.post("/auth/token", json={"email": s.email, "password": "wrong password"})
        assert bad.status_code == 401 and bad.json() == {"detail": "wrong email or password"}
        again = c.post("/auth/register", json={"email": s.email, "password": "another pw 1",
                                               "full_name": "X"})
        assert (again.status_code, again.json()) == (202, REGISTRATION_ACCEPTED)
        assert c.post("/auth/token", json={"email": s.email,
                                           "password": "another pw 1"}).status_code == 401
    with connect_as(api.app.state.profile) as conn:
        stored = conn.execute("SELECT password_hash FROM users WHERE email = %s",
                              (s.email,)).fetchone()[0]
    assert stored.startswith("$argon2id$") and s.password not in stored


def test_registering_a_taken_address_answers_like_a_new_one_and_logs_nothing(
        api: RunningApi, cluster, caplog):
    """Same status, body and headers for a new and a taken address (in another case); the taken
    one changes nothing, raises no unique violation and leaves the address in no log."""
    caplog.set_level(logging.DEBUG, logger="studyhub")
    email = f"taken-{uuid.uuid4().hex[:12]}@test.studyhub"
    offsets = {p: p.stat().st_size for p in cluster.logs_dir.glob("*.log")}
    answers = []
    for address, password, name in ((email, "owner's password", "Owner"),
                                    (email.upper(), "impostor's password", "Impostor")):
        with api.client() as c:
            r = c.post("/auth/register", json={"email": address, "password": password,
                                               "full_name": name})
        answers.append((r.status_code, r.json(),
                        {k: v for k, v in r.headers.items() if k != "date"}))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (202, REGISTRATION_ACCEPTED)
    with connect_as(api.app.state.profile) as conn:
        rows = conn.execute("SELECT s.full_name FROM users u JOIN students s ON s.user_id = u.id "
                            "WHERE u.email = %s", (email,)).fetchall()
    assert rows == [("Owner",)]
    with api.client() as c:
        assert c.post("/auth/token", json={"email": email,
                                           "password": "owner's password"}).status_code == 200
        assert c.post("/auth/token", json={"email": email,
                                           "password": "impostor's password"}).status_code == 401
    logs = "".join(p.read_bytes()[offsets.get(p, 0):].decode(errors="replace")
                   for p in cluster.logs_dir.glob("*.log"))
    assert "uq_users_email" not in logs  # no unique violation happened at all
    for text in (logs, caplog.text):
        assert email not in text and email.upper() not in text


def test_one_student_cannot_read_or_change_anothers_rows(api: RunningApi, subject: str):
    alice, bob = register(api, "Alice"), register(api, "Bob")
    note = alice.post("/notes", json={"subject_id": subject, "title": "Alice's secret",
                                      "body": "private"}).json()
    card = alice.post("/flashcards", json={"subject_id": subject, "front": "q", "back": "a",
                                           "note_id": note["id"]}).json()
    session = alice.post("/revision-sessions", json={}).json()
    alice.post("/ai-interactions", json={"model": "m", "prompt": "alice asks", "response": "r",
                                         "prompt_tokens": 1, "completion_tokens": 1,
                                         "latency_ms": 1})
    for path in (f"/notes/{note['id']}", f"/flashcards/{card['id']}",
                 f"/flashcards/{card['id']}/reviews", f"/revision-sessions/{session['id']}"):
        assert bob.get(path).status_code == 404, path
    assert bob.patch(f"/notes/{note['id']}", json={"title": "pwned"}).status_code == 404
    assert bob.delete(f"/notes/{note['id']}").status_code == 404
    assert bob.post(f"/flashcards/{card['id']}/reviews", json={"rating": 3}).status_code == 404
    assert bob.post(f"/revision-sessions/{session['id']}/end").status_code == 404
    # Bob cannot hang his card or AI log on Alice's note (the foreign key alone would allow it).
    assert bob.post("/flashcards", json={"subject_id": subject, "front": "q", "back": "a",
                                         "note_id": note["id"]}).status_code == 422
    assert bob.post("/ai-interactions", json={"note_id": note["id"], "model": "m", "prompt": "p",
                                              "response": "r", "prompt_tokens": 0,
                                              "completion_tokens": 0,
                                              "latency_ms": 0}).status_code == 422
    # Nor review his card inside Alice's session.
    bob_card = bob.post("/flashcards", json={"subject_id": subject, "front": "q",
                                             "back": "a"}).json()
    assert bob.post(f"/flashcards/{bob_card['id']}/reviews",
                    json={"rating": 3, "revision_session_id": session["id"]}).status_code == 422
    for path in ("/notes", "/flashcards", "/revision-sessions", "/ai-interactions"):
        items = bob.get(path).json()["items"]
        assert all(i["id"] not in (note["id"], card["id"], session["id"]) for i in items), path
        assert all("alice" not in str(i).lower() for i in items), path
    assert all(c["id"] != card["id"] for c in bob.get("/flashcards/due").json())
    # Alice's rows are untouched.
    assert alice.get(f"/notes/{note['id']}").json()["title"] == "Alice's secret"
    assert alice.get(f"/revision-sessions/{session['id']}").json()["cards_reviewed"] == 0


def test_requests_without_a_valid_token_are_refused(api: RunningApi, full_profile):
    s = register(api)
    with api.client() as c:
        assert c.get("/notes").status_code == 401
        assert c.get("/notes", headers={"Authorization": "Bearer not.a.token"}).status_code == 401
        forged = jwt.encode({"iss": "studyhub", "sub": str(uuid.uuid4()), "sid": s.student_id,
                             "iat": int(time.time()), "exp": int(time.time()) + 60},
                            "x" * 40, algorithm="HS256")
        r = c.get("/notes", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and r.json() == {"detail": "invalid token"}
        expired = api.app.state.tokens.issue(uuid.uuid4(), uuid.UUID(s.student_id), ttl_s=-10)
        r = c.get("/notes", headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and r.json() == {"detail": "token expired"}
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_invalid_input_gets_a_clear_4xx(api: RunningApi, subject: str):
    s = register(api)
    card = s.post("/flashcards", json={"subject_id": subject, "front": "q", "back": "a"}).json()
    cases = [
        (s.get("/notes/not-a-uuid"), 422, "invalid input: path.note_id: Input should be a valid UUID"),
        (s.get(f"/notes/{uuid.uuid4()}"), 404, "note not found"),
        (s.get(f"/flashcards/{uuid.uuid4()}"), 404, "flashcard not found"),
        (s.post(f"/flashcards/{uuid.uuid4()}/reviews", json={"rating": 3}), 404,
         "flashcard not found"),
        (s.post(f"/flashcards/{card['id']}/reviews", json={"rating": 0}), 422,
         "invalid input: rating: Input should be greater than or equal to 1"),
        (s.post(f"/flashcards/{card['id']}/reviews", json={"rating": 5}), 422,
         "invalid input: rating: Input should be less than or equal to 4"),
        (s.post(f"/flashcards/{card['id']}/reviews",
                json={"rating": 3, "reviewed_at": "2999-01-01T00:00:00Z"}), 422,
         "invalid input: reviewed_at: in the future"),
        (s.post(f"/flashcards/{card['id']}/reviews",
                json={"rating": 3, "reviewed_at": "2026-01-01T00:00:00"}), 422,
         "invalid input: reviewed_at: Input should have timezone info"),
        (s.post("/notes", json={"subject_id": subject, "title": "x" * 301}), 422,
         "invalid input: title: String should have at most 300 characters"),
        (s.post("/notes", json={"subject_id": subject, "title": "t", "body": "x" * 100_001}), 422,
         "invalid input: body: String should have at most 100000 characters"),
        (s.post("/notes", json={"subject_id": subject, "title": ""}), 422,
         "invalid input: title: String should have at least 1 character"),
        (s.post("/notes", json={"subject_id": str(uuid.uuid4()), "title": "t"}), 422,
         "subject_id: unknown subject"),
        (s.post("/flashcards", json={"subject_id": subject, "front": "f" * 4001, "back": "b"}),
         422, "invalid input: front: String should have at most 4000 characters"),
        (s.post("/ai-interactions", json={"model": "m", "prompt": "p" * 50_001, "response": "r",
                                          "prompt_tokens": 1, "completion_tokens": 1,
                                          "latency_ms": 1}), 422,
         "invalid input: prompt: String should have at most 50000 characters"),
        (s.get("/notes", params={"cursor": "garbage"}), 422,
         "invalid input: cursor: not a cursor this API returned"),
        (s.get("/notes", params={"limit": 1000}), 422,
         "invalid input: query.limit: Input should be less than or equal to 100"),
        (s.patch(f"/notes/{uuid.uuid4()}", json={"title": None}), 422,
         "invalid input: subject_id, title and body cannot be null"),
        (s.put(f"/me/subjects/{uuid.uuid4()}"), 404, "subject not found"),
    ]
    for response, status, detail in cases:
        assert response.status_code == status, (detail, response.text)
        assert response.json()["detail"].startswith(detail), response.json()
    huge = s.post("/notes", content=b"{" + b" " * 2_000_000 + b"}",
                  headers={"content-type": "application/json"})
    assert huge.status_code == 413
    # A rejected password is never echoed back (FastAPI's default 422 would include the input).
    with api.client() as c:
        r = c.post("/auth/register", json={"email": "x@y.z", "password": "short7",
                                           "full_name": "X"})
        assert r.status_code == 422 and "short7" not in r.text


def test_notes_crud_and_keyset_pagination(api: RunningApi, subject: str):
    s = register(api)
    created = [s.post("/notes", json={"subject_id": subject, "title": f"note {i}",
                                      "body": f"body {i} " * 50}).json() for i in range(5)]
    seen, cursor = [], None
    while True:
        page = s.get("/notes", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [n["title"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"note {i}" for i in reversed(range(5))]
    assert s.get("/notes").json()["items"][0]["preview"] == ("body 4 " * 50)[:200]
    target = created[2]["id"]
    patched = s.patch(f"/notes/{target}", json={"title": "renamed", "body": "new body"})
    assert patched.status_code == 200 and patched.json()["title"] == "renamed"
    assert s.get(f"/notes/{target}").json()["body"] == "new body"
    assert s.delete(f"/notes/{target}").status_code == 204
    assert s.get(f"/notes/{target}").status_code == 404
    assert s.delete(f"/notes/{target}").status_code == 404


def test_review_schedules_like_fsrs(api: RunningApi, subject: str, full_profile):
    """Each review's stored schedule equals fsrs.Scheduler's for the same card and time."""
    s = register(api)
    card = s.post("/flashcards", json={"subject_id": subject, "front": "capital of France?",
                                       "back": "Paris"}).json()
    assert card["state"] == "learning" and card["stability"] is None
    expected = Card(card_id=1, state=State.Learning, step=0,
                    due=datetime.fromisoformat(card["due"]))
    scheduler = Scheduler(enable_fuzzing=False)
    start = datetime.now(timezone.utc) - timedelta(days=60)
    plan = [(Rating.Good, 0), (Rating.Good, 0.01), (Rating.Easy, 2), (Rating.Again, 20),
            (Rating.Hard, 20.02), (Rating.Good, 25), (Rating.Good, 40)]
    lapses = 0
    for n, (rating, day) in enumerate(plan, start=1):
        at = start + timedelta(days=day)
        r = s.post(f"/flashcards/{card['id']}/reviews",
                   json={"rating": int(rating), "reviewed_at": at.isoformat(),
                         "review_duration_ms": 1500})
        assert r.status_code == 201, r.text
        before_state = expected.state
        expected, _ = scheduler.review_card(expected, rating, review_datetime=at)
        lapses += rating == Rating.Again and before_state == State.Review
        got = r.json()["card"]
        assert got["state"] == expected.state.name.lower()
        assert got["step"] == expected.step
        assert got["stability"] == pytest.approx(expected.stability, rel=1e-12)
        assert got["difficulty"] == pytest.approx(expected.difficulty, rel=1e-12)
        assert datetime.fromisoformat(got["due"]) == expected.due
        assert datetime.fromisoformat(got["last_review"]) == at
        assert got["reps"] == n and got["lapses"] == lapses
    assert lapses == 1
    # The stored rows agree, and every review row belongs to the card's student.
    with connect_as(full_profile) as conn:
        card_row = conn.execute(
            "SELECT state, step, stability, difficulty, due, student_id FROM flashcards "
            "WHERE id = %s", (card["id"],)).fetchone()
        reviews = conn.execute(
            "SELECT rating, reviewed_at, student_id, review_duration_ms, scheduled_days "
            "FROM flashcard_reviews WHERE flashcard_id = %s ORDER BY reviewed_at",
            (card["id"],)).fetchall()
    assert card_row[:5] == (int(expected.state), expected.step, expected.stability,
                            expected.difficulty, expected.due)
    assert [r[0] for r in reviews] == [int(r) for r, _ in plan]
    assert {r[2] for r in reviews} == {card_row[5]} == {uuid.UUID(s.student_id)}
    assert all(r[3] == 1500 for r in reviews)
    history = s.get(f"/flashcards/{card['id']}/reviews").json()
    assert [h["rating"] for h in history] == [int(r) for r, _ in reversed(plan)]
    # Reviews cannot go back in time before the card's last review.
    r = s.post(f"/flashcards/{card['id']}/reviews",
               json={"rating": 3, "reviewed_at": start.isoformat()})
    assert r.status_code == 422 and "before the card's last review" in r.json()["detail"]


def test_due_queue_and_revision_session(api: RunningApi, subject: str):
    s = register(api)
    cards = [s.post("/flashcards", json={"subject_id": subject, "front": f"q{i}",
                                         "back": "a"}).json() for i in range(3)]
    due = s.get("/flashcards/due").json()
    assert [c["id"] for c in due] == [c["id"] for c in cards]  # most overdue first
    session = s.post("/revision-sessions", json={"subject_id": subject})
    assert session.status_code == 201
    sid = session.json()["id"]
    for c in cards[:2]:
        r = s.post(f"/flashcards/{c['id']}/reviews",
                   json={"rating": 4, "revision_session_id": sid})
        assert r.status_code == 201 and r.json()["review"]["revision_session_id"] == sid
    # Easy on a new card schedules it days ahead: out of the queue.
    assert [c["id"] for c in s.get("/flashcards/due").json()] == [cards[2]["id"]]
    ended = s.post(f"/revision-sessions/{sid}/end")
    assert ended.status_code == 200
    assert ended.json()["cards_reviewed"] == 2 and ended.json()["ended_at"] is not None
    assert s.post(f"/revision-sessions/{sid}/end").status_code == 409
    late = s.post(f"/flashcards/{cards[2]['id']}/reviews",
                  json={"rating": 3, "revision_session_id": sid})
    assert late.status_code == 422
    assert s.get(f"/revision-sessions/{sid}").json()["cards_reviewed"] == 2


def test_enrolment_and_subjects(api: RunningApi, subject: str):
    s = register(api)
    assert any(x["id"] == subject for x in s.get("/subjects").json())
    first = s.put(f"/me/subjects/{subject}", json={"target_grade": "A*"})
    assert first.status_code == 201 and first.json()["target_grade"] == "A*"
    again = s.put(f"/me/subjects/{subject}", json={"target_grade": "A"})
    assert again.status_code == 200
    assert [e["target_grade"] for e in s.get("/me/subjects").json()] == ["A"]
    assert s.delete(f"/me/subjects/{subject}").status_code == 204
    assert s.get("/me/subjects").json() == []
    assert s.delete(f"/me/subjects/{subject}").status_code == 404


def test_ai_interactions_are_logged(api: RunningApi, subject: str):
    s = register(api)
    note = s.post("/notes", json={"subject_id": subject, "title": "photosynthesis"}).json()
    r = s.post("/ai-interactions", json={"subject_id": subject, "note_id": note["id"],
                                         "model": "tutor-small", "prompt": "explain",
                                         "response": "light → sugar", "prompt_tokens": 12,
                                         "completion_tokens": 40, "latency_ms": 830})
    assert r.status_code == 201
    items = s.get("/ai-interactions").json()["items"]
    assert len(items) == 1
    assert {k: items[0][k] for k in ("model", "prompt_tokens", "completion_tokens",
                                     "latency_ms", "note_id")} == {
        "model": "tutor-small", "prompt_tokens": 12, "completion_tokens": 40,
        "latency_ms": 830, "note_id": note["id"]}


def test_openapi_is_served(api: RunningApi):
    with api.client() as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    assert {"/flashcards/{card_id}/reviews", "/notes", "/health", "/auth/token"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Registration answers 202 with the same body for every address, no token.
    register_responses = spec["paths"]["/auth/register"]["post"]["responses"]
    assert "202" in register_responses and "201" not in register_responses
    ref = register_responses["202"]["content"]["application/json"]["schema"]["$ref"]
    accepted = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(accepted["properties"]) == {"status", "detail", "sign_in"}
