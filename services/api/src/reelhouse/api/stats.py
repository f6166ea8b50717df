"""The live stats cache behind ``getStat``: fed by NATS stats messages, never by polling MongoDB.

Every API replica subscribes to ``<p>.stats.>`` (fan-out) and keeps the latest message per job. An
entry older than ``ttl_s`` belongs to a job that stopped reporting and is not served.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.messages import JobStats
from reelhouse.common.logging import get_logger
from reelhouse.common.subjects import Module

log = get_logger("reelhouse.api.stats")


class LiveStats:
    """Latest stats per (module, job id), as received."""

    def __init__(self, bus: Bus, *, ttl_s: float = 5.0) -> None:
        self._bus = bus
        self._ttl_s = ttl_s  # seconds a stats message stays current
        self._latest: dict[tuple[str, str], tuple[float, JobStats]] = {}
        self._sub: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe once NATS is connected (nats-py resubscribes after reconnects)."""
        while not stop.is_set():
            if await self._bus.wait_connected(timeout=1.0):
                break
        if stop.is_set():
            return
        self._sub = await self._bus.nc.subscribe(self._bus.subjects.all_stats(), cb=self._on_msg)
        await stop.wait()

    async def _on_msg(self, msg: Any) -> None:
        try:
            stats = JobStats.model_validate_json(msg.data)
        except ValidationError:
            log.warning("stats_message_invalid", subject=msg.subject)
            return
        key = (stats.module, stats.job_id)
        if stats.processData.progress == "end":  # FFmpeg's last block: the job stopped
            self._latest.pop(key, None)
        else:
            self._latest[key] = (time.monotonic(), stats)

    def forget(self, module: Module, job_id: str) -> None:
        """Drop a job's entry (it was stopped or removed through this API)."""
        self._latest.pop((module, job_id), None)

    def current(self, module: Module, *, tenant: str) -> list[JobStats]:
        """Current stats of the tenant's running jobs of one module."""
        now = time.monotonic()
        rows = []
        for key, (received, stats) in list(self._latest.items()):
            if now - received > self._ttl_s:
                del self._latest[key]
            elif key[0] == module and stats.tenant == tenant:
                rows.append(stats)
        return rows

    def current_all(self, module: Module) -> list[JobStats]:
        """Current stats of every tenant's running jobs of one module (metrics)."""
        now = time.monotonic()
        return [
            stats
            for key, (received, stats) in list(self._latest.items())
            if key[0] == module and now - received <= self._ttl_s
        ]
