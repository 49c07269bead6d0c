"""Per-request access to the databases, bound to the caller (for read-your-writes).

The dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
worker thread, a hand-off that cost more than the rest of a request in the load test."""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

from fastapi import Depends, Request, Response

from studyhub.api.auth import Principal, current_principal
from studyhub.api.db import Databases, Work
from studyhub.api.read_marks import MARK_COOKIE, MARK_HEADER, ReadAfter, ReadMarks

T = TypeVar("T")

READ_FROM_HEADER = "X-StudyHub-Read-From"
# Set when the primary is down and a replica answered: an upper bound, in seconds, on how old
# the answer may be (never above the API's max_stale_read_s).
STALE_HEADER = "X-StudyHub-Stale-Seconds"


class RequestDb:
    """``read`` goes where the router says (and names it in the X-StudyHub-Read-From header:
    "primary" or the replica's name), honouring the client's read mark, and says how stale the
    answer may be (X-StudyHub-Stale-Seconds) when the primary is down; ``write`` runs one transaction on the primary and hands
    the client a fresh read mark (header and cookie)."""

    def __init__(self, databases: Databases, me: Principal | None, request: Request,
                 response: Response) -> None:
        self.databases = databases
        self.me = me
        self._request = request
        self._response = response

    def _read_after(self) -> ReadAfter | None:
        """The stricter of the marks the client sent (header, cookie) that are genuine, its own
        and unexpired; the others are counted and ignored."""
        if self.me is None or not self.databases.router.enabled:
            return None
        marks: ReadMarks = self._request.app.state.read_marks
        found: ReadAfter | None = None
        for value in (self._request.headers.get(MARK_HEADER),
                      self._request.cookies.get(MARK_COOKIE)):
            if not value:
                continue
            verified = marks.verify(value, self.me.student_id)
            if verified is None:
                self.databases.router.counters.marks_ignored += 1
            else:
                found = verified.merge(found)
        return found

    async def read(self, work: Work[T], *, primary: bool = False) -> T:
        key = self.me.student_id if self.me else None
        served = await self.databases.read(key, work, primary=primary,
                                           read_after=self._read_after())
        self._response.headers[READ_FROM_HEADER] = served.where
        if served.stale_s is not None:
            self._response.headers[STALE_HEADER] = f"{served.stale_s:.3f}"
        return served.result

    async def write(self, work: Work[T], *, key_of: Callable[[T], Hashable] | None = None) -> T:
        key = self.me.student_id if self.me else None
        result, commit = await self.databases.write(key, work, key_of=key_of)
        if self.databases.router.enabled and commit.key is not None:
            marks: ReadMarks = self._request.app.state.read_marks
            mark = marks.issue(
                commit.key, commit.lsn,  # type: ignore[arg-type]  # keys are student ids
                unknown_lsn_pin_s=self.databases.settings.read_your_writes_fallback_s)
            self._response.headers[MARK_HEADER] = mark
            self._response.set_cookie(
                MARK_COOKIE, mark, max_age=int(marks.ttl_s), path="/", httponly=True,
                samesite="strict", secure=self._request.url.scheme == "https")
        return result


async def databases(request: Request) -> Databases:
    return request.app.state.databases


async def student_db(request: Request, response: Response,
                     me: Principal = Depends(current_principal),
                     dbs: Databases = Depends(databases)) -> RequestDb:
    return RequestDb(dbs, me, request, response)


async def anonymous_db(request: Request, response: Response,
                       dbs: Databases = Depends(databases)) -> RequestDb:
    return RequestDb(dbs, None, request, response)
