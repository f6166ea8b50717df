"""Request/reply with NATS micro services (NATS ADR-32, STYLE.md habit 7), both ends.

A service answers an error in the standard service-error headers (``Nats-Service-Error`` with
the message, ``Nats-Service-Error-Code`` with the HTTP status of the error tree) plus the error
object of the API's error shape as the body; ``Retry-After`` travels as a header too. The caller
turns every failure into the error tree in one place, :func:`call`:

- no service is subscribed ("no responders")  → :class:`Unavailable` (503, ``Retry-After``)
- no answer within the caller's wait           → :class:`UpstreamTimeout` (504)
- a service error                               → the class of its code (400, 502, 503, 504...)
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from pydantic import BaseModel

from reelhouse.common.bus import Bus
from reelhouse.common.errors import (
    Conflict,
    InternalError,
    NotFound,
    RateLimited,
    ReelhouseError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
)

__all__ = ["call", "error_from_reply", "respond_error"]

_BY_STATUS: dict[int, type[ReelhouseError]] = {
    cls.status: cls
    for cls in (
        ValidationFailed, NotFound, Conflict, RateLimited, UpstreamError, Unavailable,
        UpstreamTimeout, InternalError,
    )
}  # fmt: skip

NO_RESPONDERS_RETRY_AFTER_S = 5


async def respond_error(request: Request, error: ReelhouseError) -> None:
    """Answer ``request`` with ``error`` in the service-error headers (and as the body)."""
    headers = {k: v for k, v in error.headers.items() if k == "Retry-After"}
    body = json.dumps(error.to_body()["error"]).encode()
    await request.respond_error(str(error.status), error.message, data=body, headers=headers)


def error_from_reply(headers: dict[str, str], data: bytes) -> ReelhouseError:
    """The error-tree exception a service-error reply stands for."""
    try:
        status = int(headers.get(ERROR_CODE_HEADER, "500"))
    except ValueError:
        status = 500
    message = headers.get(ERROR_HEADER) or "the service failed"
    field = reason = None
    try:
        body: Any = json.loads(data) if data else {}
        if isinstance(body, dict):
            message = str(body.get("message") or message)
            field = body.get("field")
            reason = body.get("reason")
    except ValueError:
        pass
    cls = _BY_STATUS.get(status, InternalError)
    extra = {"Retry-After": headers["Retry-After"]} if "Retry-After" in headers else None
    return cls(message, field=field, headers=extra, reason=reason)


async def call(bus: Bus, subject: str, message: BaseModel, *, timeout_s: float, what: str) -> bytes:
    """Request ``subject`` with ``message`` and wait ``timeout_s``; the reply body on success.

    Raises the error tree: ``what`` (e.g. ``"the prober"``) names the service in messages.
    """
    try:
        reply = await bus.nc.request(subject, message.model_dump_json().encode(), timeout=timeout_s)
    except nats.errors.NoRespondersError:
        raise Unavailable(
            f"{what} is not running; try again shortly",
            headers={"Retry-After": str(NO_RESPONDERS_RETRY_AFTER_S)},
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise UpstreamTimeout(f"{what} did not answer within {timeout_s:g} s") from None
    headers = reply.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise error_from_reply(headers, reply.data)
    return reply.data
