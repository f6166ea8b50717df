"""Node registry: each running service's durable row in the ``nodes`` collection.

A row says who the node is (service, node id, host, pid, version), when it started, and, after a
clean stop, when it stopped. It is written when the node registers and when it stops, never
periodically: liveness is the live plane's (:mod:`reelhouse.common.live`, a heartbeat key per node
every ``node_heartbeat_s`` with a ``node_ttl_s`` TTL), and :meth:`NodeRegistry.beat_fields` is
what that heartbeat says beside the node's identity (capacity, running jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common import __version__
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.nodes")


class NodeRegistry:
    """Registers this process in ``nodes`` and heartbeats it."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        service: str,
        node_id: str,
        capacity: int = 0,
        interval_s: float = 2.0,
    ) -> None:
        self.db = db
        self.service = service
        self.node_id = node_id
        self.capacity = capacity  # jobs this node may run; 0 for services that run none
        self.running_jobs = 0  # updated by the service
        self.interval_s = interval_s  # seconds between tries to register while MongoDB is away
        self.started: datetime = utcnow()
        self._registered = False

    async def beat(self) -> None:
        """Write the node's row (registers it)."""
        now = utcnow()
        update = {
            "$set": {
                "service": self.service,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "started": self.started,
                "last_seen": now,
                "running_jobs": self.running_jobs,
                "capacity": self.capacity,
                "state": "running",
            },
            "$unset": {"stopped": ""},
        }
        await self.db[Collections.NODES].update_one({"_id": self.node_id}, update, upsert=True)
        if not self._registered:
            self._registered = True
            log.info("node_registered", node=self.node_id, service=self.service)

    def beat_fields(self) -> dict[str, object]:
        """What this node's live-plane heartbeat carries besides its identity."""
        return {"capacity": self.capacity, "running_jobs": self.running_jobs,
                "started": self.started.isoformat()}  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Register once (retried while MongoDB is away, never fatal), then wait for ``stop``."""
        failing = False
        while not stop.is_set():
            try:
                await self.beat()
                if failing:
                    log.info("node_register_recovered", node=self.node_id)
                break
            except Exception as exc:
                if not failing:
                    log.warning("node_register_failed", node=self.node_id, error=str(exc))
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
        await stop.wait()

    async def mark_stopped(self) -> None:
        """Record a clean stop."""
        now = utcnow()
        await self.db[Collections.NODES].update_one(
            {"_id": self.node_id},
            {"$set": {"state": "stopped", "stopped": now, "last_seen": now, "running_jobs": 0}},
        )
        log.info("node_stopped", node=self.node_id)
