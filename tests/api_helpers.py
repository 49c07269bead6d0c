"""Running the real API (uvicorn on a loopback socket, in a thread) against a test cluster, and
a small client for it."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import uvicorn

from studyhub.api.app import create_app
from studyhub.profiles import Profile
from studyhub.serving import ApiSettings
from tests.conftest import connect_as


@dataclass
class RunningApi:
    url: str
    app: Any
    profile: Profile | None = None

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def health(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/health").json()

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll /health until ``predicate(health)`` holds."""
        deadline = time.monotonic() + timeout
        h: dict[str, Any] = {}
        while time.monotonic() < deadline:
            h = self.health()
            if predicate(h):
                return h
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last health: {h}")


@contextmanager
def running_api(profile: Profile, **settings: Any) -> Iterator[RunningApi]:
    app = create_app(ApiSettings(**settings), profile=profile)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", app, profile)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass
class StudentClient:
    """A registered student with a bearer token."""

    api: RunningApi
    email: str
    password: str
    token: str
    student_id: str
    http: httpx.Client

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers={**self.headers, **kw.pop('headers', {})}, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, headers={**self.headers, **kw.pop('headers', {})}, **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.patch(path, headers={**self.headers, **kw.pop('headers', {})}, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.put(path, headers={**self.headers, **kw.pop('headers', {})}, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.delete(path, headers={**self.headers, **kw.pop('headers', {})}, **kw)


REGISTRATION_ACCEPTED = {
    "status": "accepted", "sign_in": "/auth/token",
    "detail": "registration received; sign in with POST /auth/token using this email and password",
}


def register(api: RunningApi, name: str = "Test Student") -> StudentClient:
    """Register a new student, then sign in (registration answers 202 without a token, the same
    for every address); the client keeps the read-mark cookie the sign-in hands out."""
    email = f"{uuid.uuid4().hex[:12]}@test.studyhub"
    password = f"pw-{uuid.uuid4().hex}"
    http = api.client()
    r = http.post("/auth/register", json={"email": email, "password": password, "full_name": name})
    assert (r.status_code, r.json()) == (202, REGISTRATION_ACCEPTED), r.text
    r = http.post("/auth/token", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    return StudentClient(api, email, password, body["access_token"], body["student_id"], http)


def make_subject(profile: Profile) -> str:
    """Subjects are reference data (no API to create them): insert one directly."""
    code = f"T{uuid.uuid4().hex[:8]}"
    with connect_as(profile, "app") as conn:
        (subject_id,) = conn.execute(
            "INSERT INTO subjects (code, name) VALUES (%s, %s) RETURNING id",
            (code, f"Test subject {code}"),
        ).fetchone()
    return str(subject_id)
