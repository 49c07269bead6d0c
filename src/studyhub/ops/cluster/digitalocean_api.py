"""DigitalOcean's API as ``studyhub cluster`` uses it, with the official ``pydo`` client: the
token, the client, bounded retries and errors as one clear line (``DigitalOceanApi``, which
``DigitalOceanBackend`` in ``digitalocean`` builds on).

The API token comes from ``DIGITALOCEAN_TOKEN`` or the 0600 secrets file (``do_token`` in the
profile's table, or ``token`` in a ``[digitalocean]`` table); never from argv, never logged, never
in an error message. ``STUDYHUB_DO_API_URL`` (https only) and ``STUDYHUB_DO_CA_BUNDLE`` point the
client elsewhere (a proxy, or the test suite's fake API) without weakening TLS.

Retries are bounded: 429 is retried (any method) when its Retry-After is at most
``MAX_RETRY_AFTER_S``; 500/502/503/504 are retried for GET, PUT and DELETE only — a POST that got
a 5xx may have been carried out, so it is reported as "outcome unknown" instead of repeated.
Endpoints used are listed in docs/cluster.md.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy

from studyhub.errors import ConfigError, StudyhubError
from studyhub.ops.cluster.types import Progress
from studyhub.profiles import Endpoint, Profile, read_secrets_file, secrets_file

API_URL = "https://api.digitalocean.com"
RETRY_TOTAL = 4
RETRY_BACKOFF_FACTOR = 0.5
RETRY_BACKOFF_MAX_S = 8
MAX_RETRY_AFTER_S = 60
PER_PAGE = 200  # DigitalOcean's maximum page size
FORK_TAG = "studyhub-fork"  # the tag of the clusters `cluster fork` makes

# azure-core logs requests at INFO with headers redacted; we never want them in our output.
logging.getLogger("azure").setLevel(logging.WARNING)


class DigitalOceanError(StudyhubError):
    """The DigitalOcean API refused or failed a request."""


# ---------------------------------------------------------------------------- client
def api_token(profile: Profile) -> str:
    token = os.environ.get("DIGITALOCEAN_TOKEN", "").strip()
    if token:
        return token
    data = read_secrets_file()
    token = str(data.get(profile.name, {}).get("do_token") or
                data.get("digitalocean", {}).get("token") or "").strip()
    if token:
        return token
    raise ConfigError(
        f"no DigitalOcean API token: set DIGITALOCEAN_TOKEN, or do_token in the [{profile.name}] "
        f"table (or token in [digitalocean]) of the 0600 secrets file {secrets_file()}"
    )


def api_url() -> str:
    url = os.environ.get("STUDYHUB_DO_API_URL", API_URL).rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(f"STUDYHUB_DO_API_URL must be an https:// URL (got {url!r})")
    return url


def ca_bundle() -> str | bool:
    raw = os.environ.get("STUDYHUB_DO_CA_BUNDLE")
    if not raw:
        return True  # the system's trust store
    if not os.path.isfile(raw):
        raise ConfigError(f"STUDYHUB_DO_CA_BUNDLE={raw} is not a file")
    return raw


class BoundedRetryPolicy(RetryPolicy):
    """azure-core's retry policy with our rules (see the module docstring)."""

    IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})

    def __init__(self, max_retry_after_s: float = MAX_RETRY_AFTER_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_retry_after_s = max_retry_after_s

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        status = response.http_response.status_code
        method = response.http_request.method.upper()
        if status == 429:
            wait = self.get_retry_after(response)
            return bool(settings["total"]) and (wait is None or wait <= self.max_retry_after_s)
        if status in (500, 502, 503, 504) and method in self.IDEMPOTENT:
            return bool(settings["total"])
        return False


class AttemptCounter(SansIOHTTPPolicy):
    """Counts the HTTP attempts of one logical call (it runs once per retry)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.last_retry_after: str | None = None

    def on_request(self, request: Any) -> None:
        self.attempts += 1

    def on_response(self, request: Any, response: Any) -> None:
        self.last_retry_after = response.http_response.headers.get("Retry-After")


def make_client(token: str, counter: AttemptCounter) -> Any:
    import pydo  # deferred on purpose: its generated client takes ~1.5 s to import

    return pydo.Client(
        token=token,
        endpoint=api_url(),
        connection_verify=ca_bundle(),
        connection_timeout=10,
        read_timeout=60,
        retry_policy=BoundedRetryPolicy(
            retry_total=RETRY_TOTAL, retry_status=RETRY_TOTAL, retry_connect=2, retry_read=0,
            retry_backoff_factor=RETRY_BACKOFF_FACTOR, retry_backoff_max=RETRY_BACKOFF_MAX_S,
        ),
        per_retry_policies=[counter],
        user_agent="studyhub-cluster",
    )


def _ts(raw: str | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T", 1)).astimezone(
        timezone.utc)


def _conn(obj: dict[str, Any] | None) -> tuple[str | None, int | None]:
    """Host and port of an API connection object (its password and URI are never read)."""
    obj = obj or {}
    return obj.get("host"), obj.get("port")


class DigitalOceanApi:
    """One DigitalOcean database cluster's API: ``_call`` an operation, ``_list`` every page,
    ``_wait`` for a status; every failure becomes a ``DigitalOceanError`` without the token."""

    def __init__(self, profile: Profile, client: Any = None) -> None:
        self.profile = profile
        try:
            self.cluster_id = str(uuid.UUID(profile.do_cluster_id or ""))
        except ValueError:
            raise ConfigError(
                f"profile {profile.name}: do_cluster_id {profile.do_cluster_id!r} is not a "
                f"DigitalOcean cluster id (a UUID)"
            ) from None
        self._token = api_token(profile)
        self._counter = AttemptCounter()
        self.client = client or make_client(self._token, self._counter)
        self.base = f"/v2/databases/{self.cluster_id}"

    # ------------------------------------------------------------------ calls
    def _fail(self, message: str) -> DigitalOceanError:
        return DigitalOceanError(message.replace(self._token, "***"))

    def _call(self, op: str, *args: Any, what: str, method: str = "GET",
              not_found: str | None = None, **kwargs: Any) -> Any:
        """One API operation; returns the JSON body. Errors become one clear line."""
        self._counter.attempts = 0
        self._counter.last_retry_after = None
        fn: Callable[..., Any] = getattr(self.client.databases, op)
        try:
            status, body = fn(*args, cls=lambda resp, body, _h: (resp.http_response.status_code,
                                                                 body), **kwargs)
        except ClientAuthenticationError as exc:
            raise self._fail(
                f"DigitalOcean refused the API token (401 {self._message(exc)}); set a valid one "
                f"in DIGITALOCEAN_TOKEN or the secrets file"
            ) from None
        except HttpResponseError as exc:
            raise self._http_error(exc, what, method) from None
        except ServiceRequestError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason or "SSL" in reason:
                reason = ("TLS certificate not trusted (for a private CA set "
                          "STUDYHUB_DO_CA_BUNDLE)")
            raise self._fail(f"cannot reach the DigitalOcean API at {api_url()}: {reason[:200]}") \
                from None
        except ServiceResponseError:
            unknown = " — it may or may not have been done; check before retrying" \
                if method == "POST" else ""
            raise self._fail(
                f"the connection to the DigitalOcean API broke during {what}{unknown}") from None
        if status == 404:
            raise self._fail(not_found or f"{what}: not found on DigitalOcean (404)")
        return body

    @staticmethod
    def _message(exc: HttpResponseError) -> str:
        try:
            data = exc.response.json()
            return str(data.get("message") or data.get("id") or "")[:300]
        except Exception:  # noqa: BLE001 - the body is not JSON
            return (exc.reason or "")[:300]

    def _http_error(self, exc: HttpResponseError, what: str, method: str) -> DigitalOceanError:
        status = exc.status_code
        message = self._message(exc)
        attempts = self._counter.attempts
        if status == 403:
            return self._fail(f"the API token may not do {what} (403 {message}); it needs the "
                              f"database scopes (read, create, update, delete)")
        if status == 422:
            return self._fail(f"DigitalOcean refused {what}: {message} (422)")
        if status == 429:
            wait = self._counter.last_retry_after
            hint = f", it asks to wait {wait} s" if wait else ""
            return self._fail(f"DigitalOcean's rate limit refused {what} after {attempts} "
                              f"attempt(s) (429{hint}); try again later")
        if status >= 500 and method == "POST":
            return self._fail(f"DigitalOcean answered {status} to {what}: it may or may not have "
                              f"been done; check (studyhub cluster info) before retrying")
        if status >= 500:
            return self._fail(f"DigitalOcean answered {status} to {what} after {attempts} "
                              f"attempt(s): {message}")
        return self._fail(f"DigitalOcean answered {status} to {what}: {message}")

    def _list(self, op: str, key: str, *args: Any, what: str, **kwargs: Any) -> list[dict]:
        """Every item of a list endpoint, following links.pages.next."""
        items: list[dict] = []
        page = 1
        for _ in range(1000):
            body = self._call(op, *args, what=what, params={"page": page, "per_page": PER_PAGE},
                              **kwargs)
            items += body.get(key) or []
            nxt = ((body.get("links") or {}).get("pages") or {}).get("next")
            if not nxt:
                break
            page = int(parse_qs(urlparse(nxt).query).get("page", [page + 1])[0])
        return items

    def _cluster(self) -> dict[str, Any]:
        return self._call("get_cluster", self.cluster_id, what="reading the cluster",
                          not_found=f"DigitalOcean has no cluster {self.cluster_id} "
                                    f"(do_cluster_id of profile {self.profile.name})")["database"]

    def _wait(self, what: str, fetch: Callable[[], str], ready: tuple[str, ...],
              progress: Progress, timeout_s: float, poll_interval_s: float) -> str:
        started = time.monotonic()
        while True:
            status = fetch()
            elapsed = time.monotonic() - started
            if status in ready:
                return status
            progress(f"{what}: {status} ({elapsed:.0f} s)")
            if elapsed > timeout_s:
                raise self._fail(f"{what} is still {status!r} after {timeout_s:.0f} s; "
                                 f"DigitalOcean continues — check with: studyhub cluster info")
            time.sleep(poll_interval_s)

    def _endpoint_url(self, host: str | None, port: int | None) -> str | None:
        if not host or not port:
            return None
        p = self.profile
        return Endpoint(host, port, p.database, p.users["app"], p.sslmode,
                        sslrootcert=p.sslrootcert).url()
