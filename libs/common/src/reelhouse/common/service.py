"""One skeleton for every worker service (STYLE.md habit 6).

``run_service()`` is a service's whole ``main()``: settings → logging → connect → serve → drain.
Signals (SIGTERM, SIGINT) set a stop event; an ``AsyncExitStack`` holds the NATS and MongoDB
connections; the node registers in ``nodes`` (MongoDB, once) and heartbeats into the live plane
(NATS key-value, :mod:`reelhouse.common.live`); the service's own ``serve``
coroutine runs until the stop event is set and must then stop its FFmpeg children gracefully
and return. Exit code 0 on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus, exit_if_incompatible
from reelhouse.common.contracts.messages import SystemShutdown
from reelhouse.common.live import LivePlane
from reelhouse.common.logging import configure_logging, get_logger, ship_logs
from reelhouse.common.mongo import connect_mongo, ensure_indexes, get_database
from reelhouse.common.nodes import NodeRegistry
from reelhouse.common.runtime import RuntimeSettingsWatcher
from reelhouse.common.settings import CommonSettings, load_settings

S = TypeVar("S", bound=CommonSettings)


@dataclass
class ServiceContext(Generic[S]):
    """What a running service is handed: its settings, identity, connections and stop event."""

    service: str
    settings: S
    node_id: str
    bus: Bus
    db: AsyncDatabase
    node: NodeRegistry
    live: LivePlane
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    log: structlog.stdlib.BoundLogger = field(default_factory=lambda: get_logger())
    shutting_down: bool = False
    """The stack is shutting down (``<p>.sys.shutdown`` ``prepare``): start nothing new."""

    async def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as the service is asked to stop."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout)
        except TimeoutError:
            return False
        return True


Serve = Callable[[ServiceContext[S]], Awaitable[None]]


async def _ensure_indexes_when_reachable(ctx: ServiceContext[S]) -> None:
    while not ctx.stop.is_set():
        try:
            await ensure_indexes(ctx.db)
            return
        except Exception as exc:
            ctx.log.warning("mongo_unreachable", error=str(exc).splitlines()[0][:200])
            await ctx.wait_stopped(2.0)


async def serve_service(
    *,
    service: str,
    settings: S,
    serve: Serve[S],
    capacity: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Connect, register, run ``serve`` until stopped, then drain. Usable in-process by tests."""
    node_id = settings.resolved_node_id(service)
    structlog.contextvars.bind_contextvars(service=service, node=node_id)
    log = get_logger(f"reelhouse.{service}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        bus = Bus(settings, name=node_id)
        await bus.start()
        stack.push_async_callback(bus.close)
        client = connect_mongo(settings, app_name=node_id)
        stack.push_async_callback(client.close)
        db = get_database(client, settings)
        node = NodeRegistry(db=db, service=service, node_id=node_id, capacity=capacity)
        subjects = bus.subjects
        live = LivePlane(bus, service=service, node_id=node_id,
                         heartbeat_s=settings.node_heartbeat_s, ttl_s=settings.node_ttl_s,
                         watch=(subjects.live_nodes(), subjects.live_owners()))  # fmt: skip
        live.beat_fields = node.beat_fields
        ctx: ServiceContext[S] = ServiceContext(
            service=service,
            settings=settings,
            node_id=node_id,
            bus=bus,
            db=db,
            node=node,
            live=live,
            stop=stop,
            log=log,
        )
        log.info("service_starting", nats=settings.nats_url, database=settings.mongodb_database)
        await _ensure_indexes_when_reachable(ctx)
        heartbeat = asyncio.create_task(node.run(stop), name="node-row")
        # The live plane outlives the drain (handovers watch it), so it has its own stop.
        live_stop = asyncio.Event()
        live_task = asyncio.create_task(live.run(live_stop), name="live-plane")
        # Issue 7: warn+ logs into `logs`; runtime settings applied live (docs/DECISIONS.md).
        watcher = RuntimeSettingsWatcher(
            db=db, bus=bus, settings=settings, service=service, node_id=node_id, node=node
        )
        with contextlib.suppress(Exception):  # before the first claim, if MongoDB answers
            await asyncio.wait_for(watcher.refresh(), timeout=2)
        extras = [
            asyncio.create_task(watcher.run(stop), name="runtime-settings"),
            asyncio.create_task(ship_logs(db, stop, service=service, node=node_id), name="logs"),
            asyncio.create_task(_follow_shutdown(ctx), name="shutdown-watch"),
        ]
        try:
            await serve(ctx)
            await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*extras, return_exceptions=True)
            await heartbeat
            live_stop.set()
            await live_task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.mark_stopped(), timeout=5)
            log.info("service_stopped")


async def _follow_shutdown(ctx: ServiceContext[S]) -> None:
    """``<p>.sys.shutdown``: ``prepare`` marks the service shutting down; ``exit`` stops it as
    SIGTERM does (it drains, then the process exits 0)."""

    async def on_message(msg: Any) -> None:
        try:
            order = SystemShutdown.model_validate_json(msg.data)
        except ValidationError:
            return
        ctx.shutting_down = True
        ctx.log.info("system_shutdown", phase=order.phase, by=order.by)
        if order.phase == "exit":
            ctx.stop.set()

    while not ctx.stop.is_set():  # once NATS is reached (the subscription survives reconnects)
        if await ctx.bus.wait_connected(timeout=1.0):
            try:
                await ctx.bus.nc.subscribe(ctx.bus.subjects.system_shutdown(), cb=on_message)
                return
            except Exception as exc:
                ctx.log.warning("shutdown_watch_failed", error=str(exc)[:200])
                await ctx.wait_stopped(1.0)


def run_service(
    service: str,
    settings_cls: type[S],
    serve: Serve[S],
    *,
    capacity: Callable[[S], int] | None = None,
) -> None:
    """A worker's ``main()``: load settings (exit 2 naming a bad variable), log, serve, exit 0."""
    settings = load_settings(settings_cls, program=f"reelhouse-{service}")
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    asyncio.run(
        serve_service(
            service=service,
            settings=settings,
            serve=serve,
            capacity=capacity(settings) if capacity else 0,
        )
    )
    exit_if_incompatible()
