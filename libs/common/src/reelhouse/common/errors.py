"""The error tree, mapped once to the API's error shape (docs/ARCHITECTURE.md §6).

::

    ReelhouseError                  500 INTERNAL_ERROR
     ├── ValidationFailed           400 VALIDATION_ERROR   (names the field)
     ├── Unauthorized               401 UNAUTHORIZED
     ├── Forbidden                  403 FORBIDDEN
     ├── NotFound                   404 NOT_FOUND
     ├── Conflict                   409 CONFLICT
     ├── RateLimited                429 RATE_LIMITED
     ├── Unavailable                503 UNAVAILABLE        (a dependency is down or busy)
     ├── UpstreamError              502 UPSTREAM_ERROR     (a source refused us or is invalid)
     ├── UpstreamTimeout            504 UPSTREAM_TIMEOUT   (a source or service missed its deadline)
     ├── InsufficientStorage        507 INSUFFICIENT_STORAGE (the disk is past its critical level)
     └── InternalError              500 INTERNAL_ERROR

Routes and services raise these; the API's single exception handler turns them into::

    {"success": false,
     "error": {"code": "VALIDATION_ERROR", "message": "...", "field": "recording_name",
               "details": [{"field": "recording_name", "message": "..."}]}}

``field`` is present only when one field is to blame; ``details`` lists every problem found.
``reason`` is present on errors of a server-side request (a probe, a webhook): its class,
``unreachable``, ``refused``, ``timeout``, ``not_media`` or ``forbidden_address``
(:mod:`reelhouse.common.netpolicy`), never the upstream's own text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ReelhouseError(Exception):
    """Base of every error Reelhouse raises on purpose."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers or {}
        self.reason = reason

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the API's error shape."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        if self.reason is not None:
            error["reason"] = self.reason
        return {"success": False, "error": error}


class ValidationFailed(ReelhouseError):
    code = "VALIDATION_ERROR"
    status = 400


class Unauthorized(ReelhouseError):
    code = "UNAUTHORIZED"
    status = 401


class Forbidden(ReelhouseError):
    code = "FORBIDDEN"
    status = 403


class NotFound(ReelhouseError):
    code = "NOT_FOUND"
    status = 404


class Conflict(ReelhouseError):
    code = "CONFLICT"
    status = 409


class RateLimited(ReelhouseError):
    code = "RATE_LIMITED"
    status = 429


class Unavailable(ReelhouseError):
    code = "UNAVAILABLE"
    status = 503


class UpstreamError(ReelhouseError):
    """What we asked for (a live source, for ffprobe) answered with an error or nonsense."""

    code = "UPSTREAM_ERROR"
    status = 502


class UpstreamTimeout(ReelhouseError):
    """What we asked (a live source, the prober) did not answer within the deadline."""

    code = "UPSTREAM_TIMEOUT"
    status = 504


class InsufficientStorage(ReelhouseError):
    """The storage filesystem is past its critical watermark: nothing new may record."""

    code = "INSUFFICIENT_STORAGE"
    status = 507


class InternalError(ReelhouseError):
    code = "INTERNAL_ERROR"
    status = 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error-shape body for cases that are not a :class:`ReelhouseError` (e.g. HTTP 404/405)."""
    return {"success": False, "error": {"code": code, "message": message, **extra}}
