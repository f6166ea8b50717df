"""A job whose input is one of the engine's own ingest servers (``INPUT_TYPE_SRT_SERVER``,
``INPUT_TYPE_RTMP_SERVER``; docs/INGEST.md).

The input names the server (``input_module_id``) and its publisher stream row
(``input_stream_id``); nobody types a URL. Before each FFmpeg start the run asks
:class:`IngestInput` for the reader URL: it reads the stream row once (its contribution name), then
waits, as ``waiting``, until the contribution is live in the live plane, and answers the ingest
node's fan-out URL for it (SRT, ``read/<server_id>/<name>``), with a read timeout above the
ingest's publisher-gap hold so that FFmpeg rides out a short publisher gap in one part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.ingest import IngestEvent
from reelhouse.common.contracts.media import InputIn
from reelhouse.common.contracts.types import INGEST_INPUT_TYPES
from reelhouse.common.ingest import read_contribution, stream_name
from reelhouse.common.live import LivePlane
from reelhouse.common.mongo import Collections

__all__ = ["GAP_MIN_MS", "IngestInput", "is_ingest_input"]

GAP_MIN_MS = 1000
"""A publisher silence shorter than this is jitter, not a gap (as the integrity report counts)."""


def is_ingest_input(source: Any) -> bool:
    """Whether an input block reads from one of the engine's ingest servers."""
    return getattr(source, "input_type", None) in INGEST_INPUT_TYPES


class IngestInput:
    """Resolves one run's ingest input to the fan-out reader URL, waiting for the publisher."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        live: LivePlane,
        tenant: str,
        source: InputIn,
        poll_s: float,
        gap_hold_s: float,
    ) -> None:
        self._db = db
        self._live = live
        self._tenant = tenant
        self._source = source
        self._poll_s = poll_s
        self._gap_hold_s = gap_hold_s
        self.server_id = source.input_module_id
        self.name: str | None = None  # the contribution's name, from the stream row
        self.waiting = False  # no publisher yet: FFmpeg is not started
        self._gap_subs: list[Any] = []

    async def _name(self) -> str:
        if self.name is None:
            row = await self._db[Collections.STREAMS].find_one(
                {"_id": ObjectId(self._source.input_stream_id), "tenant": self._tenant}
            )
            module = INGEST_INPUT_TYPES[self._source.input_type]
            if row is None or row.get("module_name") != module:
                raise RuntimeError(
                    "input_stream_id: no stream row of that ingest server (removed?)"
                )
            if str(row.get("entity_id")) != self.server_id:
                raise RuntimeError("input_stream_id: the stream row is on another server")
            if row.get("role_name") != "publisher":
                raise RuntimeError("input_stream_id: not a publisher stream row")
            proto = "srt" if module == "MODULE_SRT_SERVERS" else "rtmp"
            self.name = stream_name(proto, str(row.get("stream_id", "")))
        return self.name

    async def url(self, stopping: Callable[[], bool], on_wait: Callable[[], Any]) -> str:
        """The reader URL once the contribution has a publisher (or is held through a gap).

        Until then ``waiting`` is true and ``on_wait`` is awaited once; returns early by raising
        when ``stopping()`` turns true (the supervisor is being stopped)."""
        name = await self._name()
        while True:
            live = await read_contribution(self._live, self.server_id, name)
            if live is not None and live.fanout:
                self.waiting = False
                return live.reader_url(timeout_s=self._gap_hold_s + 10.0)
            if not self.waiting:
                self.waiting = True
                await on_wait()
            if stopping():
                raise RuntimeError("stopped while waiting for the publisher")
            await asyncio.sleep(self._poll_s)

    async def watch_gaps(
        self, bus: Bus, on_gap: Callable[[datetime, datetime], Awaitable[None]]
    ) -> None:
        """Call ``on_gap(began, ended)`` for every publisher gap of this contribution that its
        readers were held through (the ingest service's ``publisher_back`` events)."""
        if self._gap_subs:
            return
        subjects = [bus.subjects.event("ingest", self.server_id, kind)
                    for kind in ("publisher_back", "publisher_replaced")]  # fmt: skip

        async def on_back(msg: Any) -> None:
            try:
                event = IngestEvent.model_validate_json(msg.data)
            except ValueError:
                return
            # A return within the hold (gap_ms), or a new publisher that took over an idle one
            # (idle_ms): either way the readers got nothing for that long.
            silent_ms = event.gap_ms if event.type == "publisher_back" else event.idle_ms
            if event.name != self.name or not silent_ms or silent_ms < GAP_MIN_MS:
                return
            ended = event.timestamp
            began = ended - timedelta(milliseconds=silent_ms)
            await on_gap(began, ended)

        self._gap_subs = [await bus.nc.subscribe(subject, cb=on_back) for subject in subjects]

    async def close(self) -> None:
        for sub in self._gap_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._gap_subs = []
