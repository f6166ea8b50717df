"""ASGI middleware of the hardening: the body size limit and the rate-limit headers.

A body announced larger than REELHOUSE_MAX_BODY_BYTES is refused before it is read; a chunked
one is cut off when it passes the limit (the route's body read raises a 413, which the error
handlers turn into the error shape). Responses to counted calls get the ``X-RateLimit-*``
headers of :mod:`ratelimit`.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelhouse.api.accounts.ratelimit import STATE_KEY, Window
from reelhouse.common.errors import error_body


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            body = json.dumps(error_body("PAYLOAD_TOO_LARGE", self._too_large())).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, detail=self._too_large())
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                window = scope.get("state", {}).get(STATE_KEY)
                if isinstance(window, Window):
                    names = {name.lower() for name, _ in message.get("headers", [])}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in window.headers().items()
                        if k.lower().encode() not in names
                    ]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)
