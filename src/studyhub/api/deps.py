"""Per-request access to the databases, bound to the caller (for read-your-writes).

The dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
worker thread, a hand-off that cost more than the rest of a request in the load test."""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

from fastapi import Depends, Request, Response

from studyhub.api.auth import Principal, current_principal
from studyhub.api.db import Databases, Work

T = TypeVar("T")

READ_FROM_HEADER = "X-StudyHub-Read-From"


class RequestDb:
    """``read`` goes where the router says (and names it in the X-StudyHub-Read-From header);
    ``write`` runs one transaction on the primary."""

    def __init__(self, databases: Databases, me: Principal | None, response: Response) -> None:
        self.databases = databases
        self.me = me
        self._response = response

    async def read(self, work: Work[T], *, primary: bool = False) -> T:
        key = self.me.student_id if self.me else None
        result, where = await self.databases.read(key, work, primary=primary)
        self._response.headers[READ_FROM_HEADER] = where
        return result

    async def write(self, work: Work[T], *, key_of: Callable[[T], Hashable] | None = None) -> T:
        key = self.me.student_id if self.me else None
        return await self.databases.write(key, work, key_of=key_of)


async def databases(request: Request) -> Databases:
    return request.app.state.databases


async def student_db(response: Response, me: Principal = Depends(current_principal),
               dbs: Databases = Depends(databases)) -> RequestDb:
    return RequestDb(dbs, me, response)


async def anonymous_db(response: Response, dbs: Databases = Depends(databases)) -> RequestDb:
    return RequestDb(dbs, None, response)
