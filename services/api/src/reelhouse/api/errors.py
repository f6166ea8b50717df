"""One place that turns every error into the API's error shape (docs/ARCHITECTURE.md §6).

Besides the stable codes of the error tree, two HTTP-level codes appear: ``METHOD_NOT_ALLOWED``
(405) and ``PAYLOAD_TOO_LARGE`` (413).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelhouse.common.errors import ReelhouseError, error_body
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api")

_HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


_SUBFIELD = re.compile(r"^@([A-Za-z_][A-Za-z0-9_.]*): (.*)$", re.S)


def _field_path(loc: tuple[Any, ...]) -> str:
    # Union members add their validator as a step ("function-after[...]"): not a field.
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    return ".".join(parts)


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as ``[{field, message}]`` with dotted field paths."""
    details = []
    for err in errors:
        if err.get("type") == "json_invalid":
            details.append({"field": "body", "message": "request body is not valid JSON"})
            continue
        msg = str(err.get("msg", "invalid value"))
        loc = tuple(err.get("loc", ()))
        if msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        # Model-level checks name their sub-field as "@field: message" (contracts.media).
        match = _SUBFIELD.match(msg)
        if match:
            loc, msg = (*loc, match.group(1)), match.group(2)
        details.append({"field": _field_path(loc) or "body", "message": msg})
    return details


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable code: UNAUTHORIZED, FORBIDDEN, NOT_FOUND, ...")
    message: str = Field(description="What went wrong and what to do, for a person.")
    field: str | None = Field(None, description="The one field to blame, when there is one.")
    down: list[str] | None = Field(None, description="`/api/health`: what is down.")
    details: list[ErrorDetail] | None = None
    reason: (
        Literal["unreachable", "refused", "timeout", "not_media", "forbidden_address"] | None
    ) = Field(
        None,
        description="Class of a failed server-side request (a probe, a webhook), never the "
        "upstream's own text; `forbidden_address`: the URL's address is refused by policy.",
    )


class ErrorBody(BaseModel):
    """The API's error shape (docs/ARCHITECTURE.md §6)."""

    success: bool = False
    error: ErrorInfo


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "VALIDATION_ERROR: the request (body, query, headers) is not valid; `field` names it",
    401: "UNAUTHORIZED: no credentials, or invalid, expired or revoked ones",
    403: "FORBIDDEN: the credentials' role may not do this",
    404: "NOT_FOUND: no such object in the caller's tenant",
    409: "CONFLICT: the object's state does not allow this now (the message says why)",
    422: "VALIDATION_ERROR: the request is valid but cannot be done for this object",
    413: "PAYLOAD_TOO_LARGE: the body is larger than REELHOUSE_MAX_BODY_BYTES",
    416: "RANGE_NOT_SATISFIABLE: the Range asks for bytes past the end of the file",
    429: "RATE_LIMITED: past the caller's rate limit; see Retry-After",
    502: "UPSTREAM_ERROR: the service that was asked could not do it; `reason` is its class",
    503: "UNAVAILABLE: a dependency (database, NATS, a worker service) is not reachable; "
    "see Retry-After",
    504: "UPSTREAM_TIMEOUT: the service that was asked did not answer in time",
    507: "INSUFFICIENT_STORAGE: the storage disk is past its critical watermark",
}


def documented(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that answers ``statuses`` (besides the ones every route of its
    kind has, :func:`_common_statuses`) in the error shape; ``described``: ``s409="..."`` says
    more about one of them."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = described.get(f"s{status}", ERROR_DESCRIPTIONS[status])
        out[status] = {"model": ErrorBody, "description": text}
    return out


_AUTH_HEADERS = {"x-access-token", "authorization"}


def _common_statuses(path: str, operation: dict[str, Any]) -> list[int]:
    """The errors an operation answers by its kind, read from its spec: 400 for any input, 413
    for a body, 401/403/404 and 429 once it takes credentials (objects are per tenant; limits
    count the caller), 503 when the database or NATS is away (every route but ``/metrics``,
    which serves what the process knows)."""
    parameters = operation.get("parameters", [])
    authenticates = any(p.get("name", "").lower() == "x-access-token" for p in parameters)
    inputs = [p for p in parameters if p.get("name", "").lower() not in _AUTH_HEADERS]
    statuses = [400] if inputs or "requestBody" in operation else []
    if "requestBody" in operation:
        statuses.append(413)
    if authenticates:
        statuses += [401, 403, 404, 429]
    if path != "/metrics":
        statuses.append(503)
    return statuses


def _document_errors(app: FastAPI) -> None:
    """The spec shows each route's errors in the error shape, instead of FastAPI's 422 (we
    answer 400): the ones of its kind (:func:`_common_statuses`) and the ones the route
    declares itself (:func:`documented`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorDetail, ErrorInfo, ErrorBody):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schema.pop("$defs", None)
            schemas[model.__name__] = schema
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path, methods in spec.get("paths", {}).items():
            for operation in methods.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status in _common_statuses(path, operation):
                    responses.setdefault(
                        str(status),
                        {
                            "description": ERROR_DESCRIPTIONS[status],
                            "content": {"application/json": {"schema": ref}},
                        },
                    )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; routes just raise. The spec documents the error shape."""
    _document_errors(app)

    @app.exception_handler(ReelhouseError)
    async def _reelhouse(_: Request, exc: ReelhouseError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        first = details[0] if details else {"field": "body", "message": "invalid request"}
        body = error_body(
            "VALIDATION_ERROR",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            details=details,
        )
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR")
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ConnectionFailure)
    async def _db_down(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("mongo_unavailable", error=str(exc).splitlines()[0][:200])
        body = error_body("UNAVAILABLE", "the database is not reachable; try again shortly")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        body = error_body("INTERNAL_ERROR", "internal error; the incident was logged")
        return JSONResponse(body, status_code=500)
