"""NATS connection helper: one connection per process, reconnecting forever, drained on exit.

The connection is made in the background, so a process starts (and its health check can say
"nats: down") while nats-server is unreachable; once connected, nats-py reconnects forever.
Payloads are pydantic models serialised with ``model_dump_json()``; readers decode with
``Model.model_validate_json`` at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from reelhouse.common.errors import Unavailable
from reelhouse.common.logging import get_logger
from reelhouse.common.settings import CommonSettings
from reelhouse.common.subjects import Subjects

log = get_logger("reelhouse.bus")

MIN_SERVER_VERSION = (2, 11, 0)
"""The oldest nats-server the live plane works on: per-key TTLs and the delete markers an expired
key leaves (``limit_marker_ttl``) came in 2.11 (docs/ARCHITECTURE.md §2)."""

incompatible_server: str | None = None
"""Set (to the reason) when this process met a nats-server older than :data:`MIN_SERVER_VERSION`;
the process then stops itself and its ``main()`` exits 3 (:func:`exit_if_incompatible`)."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``"2.15.3"`` (or ``"v2.11.0-RC.1"``) as ``(2, 15, 3)``; ``(0, 0, 0)`` if unreadable."""
    parts: list[int] = []
    for piece in text.lstrip("v").split("-")[0].split(".")[:3]:
        try:
            parts.append(int(piece))
        except ValueError:
            return (0, 0, 0)
    return (*parts, 0, 0, 0)[:3]  # type: ignore[return-value]


def check_server_version(version: str) -> str | None:
    """None if ``version`` is new enough, else the reason to refuse it (naming what was found)."""
    if parse_version(version) >= MIN_SERVER_VERSION:
        return None
    need = ".".join(map(str, MIN_SERVER_VERSION[:2]))
    return (
        f"nats-server {version} is too old: Reelhouse needs {need} or newer (per-key TTLs and "
        "expiry markers for the live plane); `make up` and `make test` build the pinned one"
    )


def exit_if_incompatible() -> None:
    """End a service's ``main()`` with exit code 3 if it stopped itself over the server version."""
    if incompatible_server is not None:
        raise SystemExit(3)


class Bus:
    """A process's NATS connection and its subject builder."""

    def __init__(self, settings: CommonSettings, *, name: str) -> None:
        self.subjects = Subjects(settings.subject_prefix)
        self._servers = [s.strip() for s in settings.nats_url.split(",") if s.strip()]
        self._name = name
        self._reconnect_wait = settings.nats_reconnect_wait_s
        self._nc = NATS()
        self._connect_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self.disconnects = 0  # times the connection was lost (for /metrics)
        self.reconnects = 0  # times it came back

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect(), name="nats-connect")

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.debug("nats_error", error=str(exc) or type(exc).__name__)

        async def on_disconnect() -> None:
            self.disconnects += 1
            log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            self.reconnects += 1
            log.info("nats_reconnected", server=str(self._nc.connected_url.netloc))

        await self._nc.connect(
            servers=self._servers,
            name=self._name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        version = str(self._nc._server_info.get("version", "unknown"))  # nats-py keeps INFO here
        if (reason := check_server_version(version)) is not None:
            self._refuse(reason, version)
            return
        self._connected.set()
        log.info("nats_connected", server=str(self._nc.connected_url.netloc), version=version)

    def _refuse(self, reason: str, version: str) -> None:
        """Refuse to run against this server: log why, close, and ask the process to stop."""
        global incompatible_server
        incompatible_server = reason
        log.error("nats_server_too_old", version=version, error=reason)
        self._closing = asyncio.create_task(self._nc.close(), name="nats-refuse")
        os.kill(os.getpid(), signal.SIGTERM)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the first connection is made; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def connected(self) -> bool:
        """True while the connection is up (not while it is reconnecting)."""
        return self._connected.is_set() and self._nc.is_connected

    @property
    def nc(self) -> NATS:
        """The nats-py client; raises :class:`Unavailable` before the first connection."""
        if not self._connected.is_set():
            raise Unavailable("NATS is not reachable yet")
        return self._nc

    async def publish(self, subject: str, message: BaseModel, **kwargs: Any) -> None:
        """Publish a pydantic model as JSON."""
        await self.nc.publish(subject, message.model_dump_json().encode(), **kwargs)

    async def server_version(self, timeout: float = 1.0) -> str:
        """The server's version after a round trip (proves the connection works now)."""
        nc = self.nc
        await nc.flush(timeout=timeout)
        return str(nc._server_info.get("version", "unknown"))  # nats-py keeps INFO here

    async def close(self) -> None:
        """Drain (flush subscriptions and pending publishes) and close."""
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connect_task
        if self._nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), timeout=5)
        if not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()


async def connect(servers: str | list[str], **kwargs: Any) -> NATS:
    """Plain connection for tools and tests (fails if the server is not there)."""
    return await nats.connect(servers, **kwargs)
