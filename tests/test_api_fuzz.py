"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis), in-process
against a real database: every operation, once with an authenticated student's bearer token
(a student with a subject, notes, cards, reviews and sessions, whose real ids the generated
requests use about half the time) and once with no token at all.

Checks on every response: no 5xx (nor an exception escaping the app), the status code is one
the schema documents for that operation, and the body and content type match the documented
response. Generation is derandomized (the same cases every run, no example database) and
bounded per operation and mode, so CI is not flaky: about 40 s on two busy cores, hence
``slow``. What it found is pinned by ordinary tests in test_api_input.py, so it stays fixed
even if a change of schemathesis stops generating those cases.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from studyhub.api.app import create_app
from studyhub.ops import migrate
from studyhub.serving import ApiSettings
from tests.api_helpers import make_subject

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance]
EXAMPLES_PER_OPERATION = 25
FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None,
                         deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.data_too_large])


# Date-times anywhere in Python's range with any UTC offset, a third of them at either edge of
# the range, where converting to UTC leaves it (year 0 or 10000): schemathesis' own strategy
# rarely goes there.
ANY_OFFSET = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
schemathesis.openapi.format("date-time", st.one_of(
    st.datetimes(timezones=ANY_OFFSET),
    st.datetimes(max_value=datetime(1, 1, 1, 23, 59), timezones=ANY_OFFSET),
    st.datetimes(min_value=datetime(9999, 12, 31), timezones=ANY_OFFSET),
).map(datetime.isoformat))


@pytest.fixture(scope="module")
def fuzz_profile(cluster, profile):
    """A database of its own: the fuzzer registers hundreds of odd accounts."""
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    fuzz = dataclasses.replace(profile, database=name)
    migrate.upgrade(fuzz)
    yield fuzz
    cluster.drop_database(name)


@pytest.fixture(scope="module")
def fuzz_app(fuzz_profile):
    app = create_app(ApiSettings(use_pooler=False, use_replica=False), profile=fuzz_profile)
    yield app
    asgi.shutdown_lifespans()  # close the engines opened by the in-process lifespan


@pytest.fixture(scope="module")
def student(fuzz_app, fuzz_profile) -> dict[str, Any]:
    """A registered student with some of everything; returns the token and the real ids."""
    subject = make_subject(fuzz_profile)
    with asgi.get_client(fuzz_app) as http:
        email = f"{uuid.uuid4().hex[:10]}@fuzz.studyhub"
        r = http.post("/auth/register", json={"email": email, "password": "fuzzing password",
                                              "full_name": "Fuzz Student"})
        assert r.status_code == 202, r.text
        r = http.post("/auth/token", json={"email": email, "password": "fuzzing password"})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            res = http.post(path, json=body, headers=auth)
            assert res.status_code in (200, 201), (path, res.text)
            return res.json()

        assert http.put(f"/me/subjects/{subject}", json={"target_grade": "A"},
                        headers=auth).status_code == 201
        note = post("/notes", {"subject_id": subject, "title": "photosynthesis", "body": "light"})
        card = post("/flashcards", {"subject_id": subject, "note_id": note["id"],
                                    "front": "q", "back": "a"})
        session = post("/revision-sessions", {"subject_id": subject})
        post(f"/flashcards/{card['id']}/reviews",
             {"rating": 3, "revision_session_id": session["id"]})
        post("/ai-interactions", {"subject_id": subject, "note_id": note["id"], "model": "m",
                                  "prompt": "p", "response": "r", "prompt_tokens": 1,
                                  "completion_tokens": 1, "latency_ms": 1})
    return {"headers": auth, "ids": {
        "subject_id": subject, "note_id": note["id"], "card_id": card["id"],
        "session_id": session["id"], "revision_session_id": session["id"]}}


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    # No random Authorization headers: each run sends the student's token or none.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def with_real_ids(case, ids: dict[str, str]) -> None:
    """Point the case's path ids and body references at the student's own rows."""
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict):
        for name in ("subject_id", "note_id", "revision_session_id"):
            if name in case.body:
                case.body[name] = ids[name]


def fuzz(schema, headers: dict[str, str], ids: dict[str, str] | None) -> list[str]:
    """Every operation, with valid and with invalid input (schemathesis' positive and negative
    modes); returns one line per operation and mode that failed a check, with the shrunk case
    that did (schemathesis' message holds a curl command to replay it)."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ_SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode),
                   real_ids=st.booleans() if ids else st.just(False))
            def check(case, real_ids: bool) -> None:
                if real_ids:
                    with_real_ids(case, ids)
                if case.headers:
                    case.headers.pop("Authorization", None)
                try:
                    case.call_and_validate(headers=headers, checks=CHECKS)
                except Exception as exc:  # the app raised: over a socket, a bare 500
                    raise AssertionError(
                        f"the app raised {type(exc).__name__}: {exc}\n"
                        f"    {case.as_curl_command(headers=headers)}") from exc

            try:
                check()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, operation.label
                continue  # no parameters and no body: there is no invalid input to send
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a
                failures.append(f"{operation.label} ({mode.value}): {exc}")  # BaseExceptionGroup
    return failures


def test_fuzz_every_operation_as_a_student(api_schema, student):
    failures = fuzz(api_schema, student["headers"], student["ids"])
    assert not failures, "\n\n".join(failures)


def test_fuzz_every_operation_without_a_token(api_schema):
    failures = fuzz(api_schema, {}, None)
    assert not failures, "\n\n".join(failures)
