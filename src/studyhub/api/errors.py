"""Errors as HTTP answers: one clear ``detail`` line, never the client's input echoed back
(it may be a password or a 100 kB note), never SQL or its parameters."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from studyhub.api.db import DatabaseUnavailable

log = logging.getLogger("studyhub.api")


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()]


# constraint name → what to tell the client (constraint names follow models.NAMING_CONVENTION).
# uq_users_email is absent on purpose: registration never raises it (ON CONFLICT DO NOTHING) and
# must never say that an address is registered.
CONSTRAINT_MESSAGES = {
    "fk_notes_subject_id_subjects": (422, "subject_id: unknown subject"),
    "fk_flashcards_subject_id_subjects": (422, "subject_id: unknown subject"),
    "fk_revision_sessions_subject_id_subjects": (422, "subject_id: unknown subject"),
    "fk_ai_interactions_subject_id_subjects": (422, "subject_id: unknown subject"),
    "fk_student_subjects_subject_id_subjects": (404, "subject not found"),
    "pk_student_subjects": (409, "already enrolled in this subject"),
}


def _driver_error(exc: DBAPIError) -> Any:
    orig = exc.orig
    return getattr(orig, "driver_exception", None) or getattr(orig, "__cause__", None) or orig


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_input(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid input"}
        summary = f"invalid input: {_where(tuple(first['loc']))}: {first['msg']}"
        if len(errors) > 1:
            summary += f" (and {len(errors) - 1} more)"
        return JSONResponse({"detail": summary, "errors": errors}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        driver = _driver_error(exc)
        name = getattr(driver, "constraint_name", None) or ""
        status, detail = CONSTRAINT_MESSAGES.get(name, (0, ""))
        if not status:
            sqlstate = getattr(driver, "sqlstate", "") or ""
            if sqlstate == "23505":
                status, detail = 409, "conflicts with an existing row"
            elif sqlstate == "23503":
                status, detail = 422, "refers to something that does not exist"
            else:
                status, detail = 422, f"value rejected by the database ({name or sqlstate})"
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.error("database unavailable: %s", exc.reason)
        return JSONResponse({"detail": "database unavailable, try again shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(DBAPIError)
    async def db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        driver = _driver_error(exc)
        sqlstate = getattr(driver, "sqlstate", "") or ""
        if sqlstate.startswith("22"):  # data exception (e.g. a value out of range)
            return JSONResponse({"detail": "invalid value"}, status_code=422)
        log.error("database error %s (%s)", sqlstate, type(driver).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)
