"""The API's request body limit over real HTTP: 413 with the JSON ``detail`` on every route that
takes a body, whether the client declares Content-Length or streams the body chunked."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.api_helpers import RunningApi, StudentClient, make_subject, register, running_api

LIMIT = 1_048_576
TOO_LARGE = {"detail": f"request body larger than {LIMIT} bytes"}


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


def chunks(total: int, size: int) -> Iterator[bytes]:
    """A JSON object of ``total`` bytes in pieces of ``size``: httpx sends a generator body
    with Transfer-Encoding: chunked and no Content-Length."""
    yield b'{"title": "'
    sent = len(b'{"title": "') + len(b'"}')
    while sent < total:
        piece = min(size, total - sent)
        yield b"x" * piece
        sent += piece
    yield b'"}'


def body_routes(subject: str, student: StudentClient) -> list[tuple[str, str]]:
    card = student.post("/flashcards", json={"subject_id": subject, "front": "q",
                                             "back": "a"}).json()["id"]
    note = student.post("/notes", json={"subject_id": subject, "title": "t"}).json()["id"]
    return [("POST", "/auth/register"), ("POST", "/auth/token"), ("POST", "/notes"),
            ("PATCH", f"/notes/{note}"), ("POST", "/flashcards"), ("PATCH", f"/flashcards/{card}"),
            ("POST", f"/flashcards/{card}/reviews"), ("POST", "/revision-sessions"),
            ("PUT", f"/me/subjects/{subject}"), ("POST", "/ai-interactions")]


def test_a_chunked_body_over_the_limit_answers_413_on_every_route(api, student, subject):
    for method, path in body_routes(subject, student):
        for piece in (64 * 1024, 1000):  # big chunks, and many small ones
            request = student.http.build_request(
                method, path, content=chunks(LIMIT + 10_000, piece),
                headers={**student.headers, "content-type": "application/json"})
            assert "content-length" not in request.headers
            assert request.headers["transfer-encoding"] == "chunked"
            res = student.http.send(request)
            assert res.status_code == 413, (method, path, piece, res.status_code, res.text)
            assert res.json() == TOO_LARGE, (method, path)


def test_a_declared_content_length_over_the_limit_answers_413_before_the_route_runs(
        api, student, subject):
    for method, path in body_routes(subject, student):
        res = student.http.request(method, path, content=b"{" + b" " * (LIMIT + 1) + b"}",
                                   headers={**student.headers,
                                            "content-type": "application/json"})
        assert res.status_code == 413, (method, path, res.text)
        assert res.json() == TOO_LARGE
    # Even a route that reads no body refuses, and does nothing (the note is still there).
    note = student.post("/notes", json={"subject_id": subject, "title": "kept"}).json()["id"]
    res = student.http.request("DELETE", f"/notes/{note}", content=b" " * (LIMIT + 1),
                               headers=student.headers)
    assert res.status_code == 413 and res.json() == TOO_LARGE
    assert student.get(f"/notes/{note}").status_code == 200


def test_a_chunked_body_within_the_limit_is_accepted(api, student, subject):
    body = ('{"subject_id": "%s", "title": "streamed", "body": "%s"}'
            % (subject, "y" * 90_000)).encode()
    res = student.http.post("/notes", content=(body[i:i + 1000] for i in range(0, len(body), 1000)),
                            headers={**student.headers, "content-type": "application/json"})
    assert res.status_code == 201, res.text
    assert res.json()["title"] == "streamed" and len(res.json()["body"]) == 90_000

