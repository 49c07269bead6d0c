"""Errors as HTTP answers: one clear ``detail`` line, never the client's input echoed back
(it may be a password or a 100 kB note), never SQL or its parameters — and documented in the
OpenAPI schema as they are answered (``ErrorOut``, ``ValidationErrorOut``).

What every operation of a kind can answer is added to the schema here (``document_errors``):
401 where a bearer token is needed, 400 (FastAPI's answer to a body it cannot decode) and 413
where a body is read, 422 (our shape, not FastAPI's)
where FastAPI validates input, 503 where the database is used. What only some routes answer
(404, 409) is declared on those routes with ``error_responses``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from studyhub.api.db import DatabaseUnavailable

log = logging.getLogger("studyhub.api")


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, in one line.")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field.")
    msg: str
    type: str | None = None


class ValidationErrorOut(ErrorOut):
    errors: list[FieldError] = Field(
        default_factory=list,
        description="Every invalid field, when the request failed validation (the input is not "
                    "echoed); absent when the problem was found later (an unknown subject, a "
                    "cursor this API did not return).")


ERROR_DESCRIPTIONS = {
    400: "The request body could not be read (not UTF-8, or not the declared content type).",
    401: "Missing, invalid or expired bearer token.",
    404: "Not found (another student's rows are not found either).",
    409: "Conflicts with the current state.",
    413: "Request body larger than the limit (1 MiB by default).",
    422: "Invalid input: the first problem in `detail`, every one in `errors`.",
    503: "Database unavailable, try again shortly (see Retry-After).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: these error statuses, with our body."""
    return {status: {"model": ValidationErrorOut if status == 422 else ErrorOut,
                     "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add to a generated OpenAPI schema (in place) the errors every operation of a kind can
    answer, and replace FastAPI's 422 body (a list of errors in ``detail``) with ours."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorOut, ValidationErrorOut):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)

    def response(status: int) -> dict[str, Any]:
        model = ValidationErrorOut if status == 422 else ErrorOut
        return {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}

    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = response(422)
            if operation.get("security"):
                responses.setdefault("401", response(401))
            if "requestBody" in operation:
                responses.setdefault("400", response(400))
                responses.setdefault("413", response(413))
                responses.setdefault("422", response(422))
            responses.setdefault("503", response(503))
    return schema


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
