"""A filtering HTTP proxy on loopback that keeps FFmpeg, ffprobe and webhooks to the policy.

FFmpeg resolves names and follows HTTP redirects itself, and an HLS playlist names further URLs
(segments, variant playlists) on any host. So a check before the call is not enough: every
connection is checked when it is made. FFmpeg reads ``http_proxy`` from its environment for plain
HTTP (absolute-form requests) and for **every TLS connection** (``https``, ``rtmps``, ``rtsps``:
an HTTP ``CONNECT`` tunnel, so TLS and its SNI stay end to end). The proxy resolves the target,
checks every address with :class:`~reelhouse.common.netpolicy.NetPolicy`, and connects to the
address it checked: a redirect, a segment or a re-resolved name (DNS rebinding) that points at a
refused address gets ``403`` with ``X-Reelhouse-Proxy-Error: forbidden_address`` and nothing
else; a target that refuses, times out or cannot be reached gets a 502/504 with its class in that
header (and in the reason phrase, which is all a client sees of a failed ``CONNECT``).

One proxy serves one run (an ffprobe, a job's FFmpeg, the API's webhook client), so what it
refused or could not reach is that run's (:attr:`FilteringProxy.events`) and the caller reports
its class (``forbidden_address``, ``refused``, ``timeout``, ``unreachable``), never the upstream
text. It listens on ``127.0.0.1`` on a port of its own, bound when it is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from reelhouse.common.netpolicy import AddressRefused, ErrorClass, NetPolicy, Unresolvable

__all__ = ["PROXY_ERROR_HEADER", "STATUS", "FilteringProxy", "ProxyEvent"]

PROXY_ERROR_HEADER: Final = "X-Reelhouse-Proxy-Error"
"""Header of an answer the proxy made itself instead of connecting (value: the error class)."""

STATUS: Final[dict[ErrorClass, str]] = {
    "forbidden_address": "403 Forbidden Address",
    "refused": "502 Connection Refused",
    "unreachable": "502 Unreachable",
    "timeout": "504 Gateway Timeout",
}
"""The proxy's answer for each class (the reason phrase names it)."""

_HEAD_LIMIT: Final = 64 * 1024
_HOP_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}
)


@dataclass(frozen=True)
class ProxyEvent:
    """A connection the proxy did not make, and why."""

    target: str
    """``host:port`` as the client asked for it."""
    error_class: ErrorClass
    detail: str
    """For logs: the refusal's reason or the OS error (never sent to an API caller)."""


class _Failed(Exception):
    def __init__(self, error_class: ErrorClass) -> None:
        self.error_class = error_class


class FilteringProxy:
    """An HTTP/CONNECT proxy that connects only where ``policy`` allows (see the module doc)."""

    def __init__(self, policy: NetPolicy, *, connect_timeout_s: float = 10.0) -> None:
        self.policy = policy
        self.connect_timeout_s = connect_timeout_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self.events: deque[ProxyEvent] = deque(maxlen=32)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for an FFmpeg child: the proxy, and no ``no_proxy`` exceptions."""
        return {"http_proxy": f"{self.url}/", "no_proxy": "", "NO_PROXY": ""}

    def first(self, error_class: ErrorClass) -> ProxyEvent | None:
        """The first recorded event of ``error_class``."""
        return next((e for e in self.events if e.error_class == error_class), None)

    async def start(self) -> FilteringProxy:
        """Serve (idempotent); connections made before that wait in the backlog."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, sock=self._sock, limit=_HEAD_LIMIT
            )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def __aenter__(self) -> FilteringProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- one client connection -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except TimeoutError:
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await self._answer(writer, "400 Bad Request")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            if not host or not port_text.isdigit():
                await self._answer(writer, "400 Bad Request")
                return
            upstream = await self._open(writer, host.strip("[]"), int(port_text))
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._splice(reader, writer, *upstream)
            return
        parts = urlsplit(target)
        if parts.scheme.lower() != "http" or not parts.hostname:
            await self._answer(writer, "400 Bad Request")  # only absolute http:// requests
            return
        try:
            port = parts.port or 80
        except ValueError:
            await self._answer(writer, "400 Bad Request")
            return
        upstream = await self._open(writer, parts.hostname, port)
        if upstream is None:
            return
        path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        kept = [
            h for h in lines[1:] if h and h.split(":", 1)[0].strip().lower() not in _HOP_HEADERS
        ]
        if not any(h.split(":", 1)[0].strip().lower() == "host" for h in kept):
            kept.append(f"Host: {parts.netloc.rpartition('@')[2]}")
        request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        upstream[1].write(request.encode("latin-1"))
        await self._splice(reader, writer, *upstream)

    async def _open(
        self, writer: asyncio.StreamWriter, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        target = f"{host}:{port}"
        try:
            addresses = await self.policy.resolve(host, port)
            failure: _Failed | None = None
            for address in addresses:
                try:
                    return await asyncio.wait_for(
                        asyncio.open_connection(str(address), port), self.connect_timeout_s
                    )
                except ConnectionRefusedError:
                    failure = _Failed("refused")
                except TimeoutError:
                    failure = _Failed("timeout")
                except OSError:
                    failure = _Failed("unreachable")
            assert failure is not None
            raise failure
        except AddressRefused as exc:
            self.events.append(ProxyEvent(target, "forbidden_address", str(exc)))
            await self._answer(writer, STATUS["forbidden_address"], "forbidden_address")
        except Unresolvable as exc:
            self.events.append(ProxyEvent(target, "unreachable", str(exc)))
            await self._answer(writer, STATUS["unreachable"], "unreachable")
        except _Failed as exc:
            self.events.append(ProxyEvent(target, exc.error_class, exc.error_class))
            await self._answer(writer, STATUS[exc.error_class], exc.error_class)
        return None

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter, status: str, error_class: str | None = None
    ) -> None:
        body = (error_class or status).encode()
        extra = f"{PROXY_ERROR_HEADER}: {error_class}\r\n" if error_class else ""
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    @staticmethod
    async def _splice(
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()

        tasks = {
            asyncio.ensure_future(pipe(client_r, upstream_w)),
            asyncio.ensure_future(pipe(upstream_r, client_w)),
        }
        try:
            # Either end closing ends the exchange: the origin after its response (we asked
            # for Connection: close), or FFmpeg closing a tunnel it is done with.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            upstream_w.close()
            with contextlib.suppress(Exception):
                await upstream_w.wait_closed()
