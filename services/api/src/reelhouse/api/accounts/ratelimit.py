"""Rate limits shared by every API replica: fixed windows counted in the live plane.

Three buckets (the channel-recorder seed's table; settings ``REELHOUSE_RATE_LIMIT_*``):
``auth`` (``/api/auth/*``, per client address), ``read`` (GET and ``get*`` methods) and
``write`` (everything else), both per user or API key. The bootstrap token is not limited (the
instance's break-glass credential, for the owner's scripts; the dashboard signs in as a user
and paces its poll by the ``X-RateLimit-*`` headers).

Limits are parsed by the ``limits`` library (``"100/minute"``). A window's count is one key of the
live plane's bucket (docs/ARCHITECTURE.md §2), ``rates.<bucket>.<who, hashed>.<window start>``,
added to by compare-and-set (:meth:`LivePlane.count`) with a per-key TTL of the window plus a
minute: no request waits on a database write, and every replica counts in the same key, so two
replicas enforce one limit. With NATS unreachable the call is let through (and logged): a limit
must not turn a NATS outage into an API outage.

Each counted response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (Unix time the window ends), added by :mod:`middleware`; past the limit
the answer is 429 ``RATE_LIMITED`` with ``Retry-After``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from limits import RateLimitItem, parse
from starlette.requests import HTTPConnection

from reelhouse.common.errors import RateLimited
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.ratelimit")

Bucket = Literal["auth", "read", "write"]
STATE_KEY = "rate_limit"
"""Where the request's window is kept in the ASGI scope's state (read by the middleware)."""


@dataclass(frozen=True)
class Window:
    limit: int
    count: int
    reset: int
    """Unix time the window ends."""

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


@lru_cache(maxsize=32)
def parse_limit(text: str) -> RateLimitItem:
    """``"100/minute"`` → the ``limits`` item (raises ValueError when malformed)."""
    return parse(text)


def bucket_of(method: str, path: str) -> Bucket:
    if path.startswith("/api/auth/"):
        return "auth"
    if method in ("GET", "HEAD") or path.rstrip("/").rsplit("/", 1)[-1].startswith("get"):
        return "read"
    return "write"


async def hit(conn: HTTPConnection, bucket: Bucket, who: str) -> Window | None:
    """Count one call of ``who`` in ``bucket``; 429 past the limit. None when limits are off."""
    state = conn.app.state.reelhouse
    settings = state.settings
    if not settings.rate_limit_enabled:
        return None
    item = parse_limit(getattr(settings, f"rate_limit_{bucket}"))
    expiry = item.get_expiry()
    start = int(time.time()) // expiry * expiry
    reset = start + expiry
    key = state.bus.subjects.live_rate(bucket, who, start)
    try:
        count = await state.live.count(key, ttl_s=expiry + 60)
    except Exception as exc:
        log.warning("rate_limit_uncounted", bucket=bucket, error=str(exc) or type(exc).__name__)
        return None
    window = Window(limit=item.amount, count=count, reset=reset)
    conn.scope.setdefault("state", {})[STATE_KEY] = window
    if window.count > window.limit:
        retry = max(1, reset - int(time.time()))
        raise RateLimited(
            f"too many {bucket} requests: {window.limit} per {item.GRANULARITY.name}; "
            f"try again in {retry} s",
            headers={**window.headers(), "Retry-After": str(retry)},
        )
    return window


async def limit_auth(conn: HTTPConnection) -> None:
    """Dependency of ``/api/auth/*``: counted per client address."""
    client = conn.client.host if conn.client else "unknown"
    await hit(conn, "auth", f"ip:{client}")
