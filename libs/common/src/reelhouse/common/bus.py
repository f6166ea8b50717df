"""NATS connection helper: one connection per process, reconnecting forever, drained on exit.

The connection is made in the background, so a process starts (and its health check can say
"nats: down") while nats-server is unreachable; once connected, nats-py reconnects forever.
Payloads are pydantic models serialised with ``model_dump_json()``; readers decode with
``Model.model_validate_json`` at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from reelhouse.common.errors import Unavailable
from reelhouse.common.logging import get_logger
from reelhouse.common.settings import CommonSettings
from reelhouse.common.subjects import Subjects

log = get_logger("reelhouse.bus")


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
        self._connected.set()
        log.info("nats_connected", server=str(self._nc.connected_url.netloc))

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
