"""Odd input and the errors the API documents, over real HTTP: what the fuzzer
(test_api_fuzz.py) and probing with odd values found, pinned case by case — NUL characters,
dates at the edge of the calendar, bodies that are not UTF-8 — and an OpenAPI schema that
documents every error status each operation answers, with the body it really has."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Iterator

import pytest

from tests.api_helpers import RunningApi, StudentClient, make_subject, register, running_api


@pytest.fixture(scope="module")
def api(migrated) -> Iterator[RunningApi]:
    with running_api(migrated, use_pooler=False, use_replica=False) as running:
        yield running


@pytest.fixture(scope="module")
def student(api: RunningApi) -> StudentClient:
    return register(api)


@pytest.fixture(scope="module")
def subject(migrated) -> str:
    return make_subject(migrated)


@pytest.fixture(scope="module")
def spec(api: RunningApi) -> dict[str, Any]:
    with api.client() as c:
        return c.get("/openapi.json").json()


def cursor_of(ts: str) -> str:
    """A cursor in the API's own encoding (base64 of [timestamp, id])."""
    raw = json.dumps([ts, str(uuid.uuid4())]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_text_with_nul_is_refused_naming_the_field_before_the_database(api, student, subject):
    """PostgreSQL text cannot hold U+0000: such input used to reach the INSERT and come back as
    422 "invalid value" (which field?); now validation names the field."""
    note = student.post("/notes", json={"subject_id": subject, "title": "t"}).json()["id"]
    new_email = f"{uuid.uuid4().hex[:8]}@test.studyhub"
    cases = [
        ("POST", "/auth/register", {"email": new_email, "password": "password 1",
                                    "full_name": "Ada\x00"}, "full_name"),
        ("POST", "/auth/token", {"email": "ada\x00@test.studyhub", "password": "x"}, "email"),
        ("POST", "/notes", {"subject_id": subject, "title": "a\x00b"}, "title"),
        ("PATCH", f"/notes/{note}", {"body": "\x00"}, "body"),
        ("POST", "/flashcards", {"subject_id": subject, "front": "q\x00", "back": "a"}, "front"),
        ("PUT", f"/me/subjects/{subject}", {"target_grade": "A\x00"}, "target_grade"),
        ("POST", "/ai-interactions", {"model": "m\x00", "prompt": "p", "response": "r",
                                      "prompt_tokens": 1, "completion_tokens": 1,
                                      "latency_ms": 1}, "model"),
    ]
    for method, path, body, field in cases:
        res = student.http.request(method, path, json=body, headers=student.headers)
        assert res.status_code == 422, (path, res.text)
        out = res.json()
        assert out["detail"] == (f"invalid input: {field}: Value error, must not contain NUL "
                                 "(\\u0000) characters"), out
        assert out["errors"][0]["loc"] == ["body", field]
    assert student.get(f"/notes/{note}").json()["body"] == ""  # nothing was written


def test_a_review_time_that_leaves_the_calendar_in_utc_is_a_422_not_a_500(api, student, subject):
    """0001-01-01T00:00+14:00 is in year 0 in UTC (and 9999-12-31T23:59-14:00 in year 10000):
    converting it raised OverflowError inside validation, a 500."""
    card = student.post("/flashcards", json={"subject_id": subject, "front": "q",
                                             "back": "a"}).json()["id"]
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        res = student.post(f"/flashcards/{card}/reviews", json={"rating": 3, "reviewed_at": when})
        assert res.status_code == 422, (when, res.text)
        assert res.json()["detail"] == "invalid input: reviewed_at: Value error, out of range"
    assert student.get(f"/flashcards/{card}").json()["reps"] == 0


def test_a_cursor_at_the_edge_of_the_calendar_is_not_one_the_api_returned(api, student):
    """Such a cursor decoded, then failed in the database ("invalid value")."""
    for path in ("/notes", "/flashcards", "/revision-sessions", "/ai-interactions",
                 "/reviews/sync"):
        for ts in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
            res = student.get(path, params={"cursor": cursor_of(ts)})
            assert res.status_code == 422, (path, ts, res.text)
            assert res.json() == {"detail": "invalid input: cursor: not a cursor this API "
                                            "returned"}


def test_a_body_that_is_not_utf8_is_a_documented_400(api, student, spec):
    res = student.http.post("/notes", content=b'{"title": "\xff\xfe"}',
                            headers={**student.headers, "content-type": "application/json"})
    assert res.status_code == 400 and isinstance(res.json()["detail"], str)
    assert "400" in spec["paths"]["/notes"]["post"]["responses"]


def error_ref(spec: dict[str, Any], path: str, method: str, status: int) -> str | None:
    response = spec["paths"][path][method]["responses"].get(str(status))
    if response is None:
        return None
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_every_error_status_is_documented_with_the_body_it_has(api, student, spec):
    """Before, the schema documented only 2xx and FastAPI's own 422 (whose ``detail`` is a
    list, while ours is a line): the fuzzer found every 401, 404, 409, 413 and 422 answer
    undocumented or not matching."""
    specific = {
        ("/auth/token", "post"): {401}, ("/me", "get"): {404},
        ("/me/subjects/{subject_id}", "put"): {404}, ("/me/subjects/{subject_id}", "delete"): {404},
        ("/notes/{note_id}", "get"): {404}, ("/notes/{note_id}", "patch"): {404},
        ("/notes/{note_id}", "delete"): {404}, ("/flashcards/{card_id}", "get"): {404},
        ("/flashcards/{card_id}", "patch"): {404}, ("/flashcards/{card_id}", "delete"): {404},
        ("/flashcards/{card_id}/reviews", "post"): {404},
        ("/flashcards/{card_id}/reviews", "get"): {404},
        ("/revision-sessions/{session_id}", "get"): {404},
        ("/revision-sessions/{session_id}/end", "post"): {404, 409},
    }
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            expected = set(specific.get((path, method), ()))
            if operation.get("security"):
                expected.add(401)
            if "requestBody" in operation:
                expected |= {400, 413, 422}
            if any(p["in"] in ("path", "query") for p in operation.get("parameters", ())):
                expected.add(422)
            if path != "/health":
                expected.add(503)
            for status in expected:
                ref = error_ref(spec, path, method, status)
                assert ref == ("ValidationErrorOut" if status == 422 else "ErrorOut"), \
                    (method, path, status, ref)
                checked += 1
    assert checked > 80
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ValidationErrorOut"]["properties"]["detail"][
        "type"] == "string"
    enrol = spec["paths"]["/me/subjects/{subject_id}"]["put"]["responses"]
    assert {"200", "201"} <= set(enrol)  # 201 when newly enrolled
    assert spec["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/Health")
    # ... and the bodies are what the schema says: a line in ``detail``; ``errors`` (required
    # by nothing) when FastAPI validated the input.
    invalid = student.get("/notes", params={"limit": 0}).json()
    assert isinstance(invalid["detail"], str) and invalid["errors"][0]["loc"] == [
        "query", "limit"]
    schema = spec["components"]["schemas"]["ValidationErrorOut"]
    assert schema["required"] == ["detail"]
    assert set(student.get("/notes", params={"cursor": "garbage"}).json()) == {"detail"}
    assert set(student.http.get("/notes").json()) == {"detail"}  # 401
