"""Monitoring of started streams: claim by lease, probe periodically, keep the row current.

A stream row with ``active: true`` and a ``stream_url`` is claimed by one prober
(``jobs.lease``, as recordings are: an owner key in the live plane, taken over when its prober's
heartbeat expires, released on stop), so several prober replicas never monitor one stream twice.
Its monitor probes the URL every ``monitor_interval_s`` (sharing the node's ffprobe slots) and
writes, only when something changed and only while the row still names it:

- ``status: {state: online|offline, since, node, error}``, publishing a ``stream_status`` event
  on each change of state. A stream that was online goes offline after two failed probes in a
  row (one lost probe is not an outage); a probe refused because this node is busy is no
  observation at all;
- ``stream_meta_data``: codec, resolution, fps, audio layout and bitrate of the last probe.

``stop`` (``active: false``) ends monitoring: the monitor removes ``status`` and publishes
``stream_status`` with ``state: "unmonitored"``. An update or a restart (the ``generation``
moved) and a shutdown only hand the stream over: the status stays, and the next monitor keeps
its ``since`` when it sees the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.streams import ProbeReply, StreamStatusChanged
from reelhouse.common.errors import ReelhouseError, Unavailable
from reelhouse.common.jobs.lease import Lease
from reelhouse.common.jobs.node import JobNode
from reelhouse.common.mongo import Collections
from reelhouse.common.service import ServiceContext
from reelhouse.prober.probes import ProbeEngine
from reelhouse.prober.settings import ProberSettings

OFFLINE_AFTER_FAILURES = 2
"""Failed probes in a row that turn an online stream offline."""

CLAIMABLE = {"stream_url": {"$exists": True, "$ne": ""}}
"""Only rows with a URL can be monitored."""


def meta_data(reply: ProbeReply) -> dict[str, Any]:
    """The row's ``stream_meta_data`` from a probe: first video and first audio stream."""
    video = next((s for s in reply.streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in reply.streams if s.get("codec_type") == "audio"), None)
    meta: dict[str, Any] = {}
    if video:
        fps = video.get("avg_frame_rate")
        if not fps or fps == "0/0":
            fps = video.get("r_frame_rate")
        meta.update(
            codec_name=video.get("codec_name"),
            profile=video.get("profile"),
            width=video.get("width"),
            height=video.get("height"),
            fps=fps,
            pix_fmt=video.get("pix_fmt"),
        )
        if video.get("width") and video.get("height"):
            meta["resolution"] = f"{video['width']}x{video['height']}"
    if audio:
        meta.update(
            audio_codec_name=audio.get("codec_name"),
            sample_rate=audio.get("sample_rate"),
            channels=audio.get("channels"),
            channel_layout=audio.get("channel_layout"),
        )
    bit_rate = reply.format.get("bit_rate")
    if bit_rate is None:
        rates = [int(s["bit_rate"]) for s in reply.streams if str(s.get("bit_rate", "")).isdigit()]
        bit_rate = sum(rates) if rates else None
    if bit_rate is not None and str(bit_rate).isdigit():
        meta["bit_rate"] = int(bit_rate)
    meta["format_name"] = reply.format.get("format_name")
    meta["streams"] = len(reply.streams)
    return {k: v for k, v in meta.items() if v is not None}


class StreamMonitor:
    """Probes one claimed stream until stopped (a :class:`~reelhouse.common.jobs.node.JobRun`)."""

    def __init__(self, node: MonitorNode, lease: Lease) -> None:
        self.node = node
        self.lease = lease
        self.stream_id = self.job_id = str(lease.job_id)
        self.url: str = lease.doc["stream_url"]
        self.tenant: str = lease.doc.get("tenant", "default")
        status = lease.doc.get("status") or {}
        self.state: str | None = status.get("state")
        self.status_node: str | None = status.get("node")
        self.meta: dict[str, Any] = lease.doc.get("stream_meta_data") or {}
        self.failures = 0
        self.task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"monitor-{self.stream_id}")
        self.node.log.info("stream_monitor_started", stream_id=self.stream_id)

    async def stop(self, reason: str) -> None:
        """End monitoring; a stopped stream (not an updated or handed-over one) loses its status."""
        if self._stopping:
            return
        self._stopping = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        node = self.node
        try:
            ended = await node.db[Collections.STREAMS].update_one(
                {"_id": self.lease.job_id, "active": False, "status": {"$exists": True}},
                {"$unset": {"status": ""}},
            )
            if ended.matched_count:
                await node.publish(
                    StreamStatusChanged(
                        job_id=self.stream_id,
                        tenant=self.tenant,
                        node=node.node_id,
                        state="unmonitored",
                        since=utcnow(),
                    )
                )
            await node.leases.release(self.lease)
        except Exception as exc:
            node.log.warning("monitor_end_failed", stream_id=self.stream_id, error=str(exc))
        node.log.info("stream_monitor_stopped", stream_id=self.stream_id, reason=reason)

    async def run(self) -> None:
        settings = self.node.settings
        log = self.node.log.bind(stream_id=self.stream_id)
        while True:
            reply: ProbeReply | None = None
            error: str | None = None
            try:
                reply = await self.node.engine.probe(
                    self.url, timeout_s=settings.monitor_timeout_s, queued=False
                )
            except Unavailable:
                pass  # this node was busy: no observation
            except ReelhouseError as exc:
                error = exc.message
            if reply is not None or error is not None:
                try:
                    if not await self._observe(reply, error):
                        log.info("monitor_lost_lease")
                        self.node.stop_run(self, "lease lost")
                        return
                except Exception as exc:
                    # MongoDB away: keep probing; the lease protocol settles ownership.
                    log.warning("monitor_write_failed", error=str(exc).splitlines()[0][:200])
            await asyncio.sleep(settings.monitor_interval_s)

    async def _observe(self, reply: ProbeReply | None, error: str | None) -> bool:
        """Record one probe; False when the lease is gone (stop monitoring)."""
        if reply is not None:
            self.failures = 0
            state = "online"
        else:
            self.failures += 1
            offline = self.state != "online" or self.failures >= OFFLINE_AFTER_FAILURES
            state = "offline" if offline else "online"
        now = utcnow()
        fields: dict[str, Any] = {}
        changed = state != self.state
        if changed:
            fields["status"] = {
                "state": state,
                "since": now,
                "node": self.node.node_id,
                "error": error if state == "offline" else None,
            }
        elif self.status_node != self.node.node_id:
            fields["status.node"] = self.node.node_id  # taken over: same state, same since
        meta = meta_data(reply) if reply is not None else None
        if meta is not None and meta != self.meta:
            fields["stream_meta_data"] = meta
        if not fields:
            return True
        result = await self.node.db[Collections.STREAMS].update_one(
            {
                "_id": self.lease.job_id,
                "runtime.node": self.node.node_id,
                "generation": self.lease.generation,
                "active": True,
            },
            {"$set": fields},
        )
        if result.matched_count == 0:
            return False
        self.status_node = self.node.node_id
        if meta is not None:
            self.meta = meta
        if changed:
            self.state = state
            self.node.log.info("stream_status", stream_id=self.stream_id, state=state, error=error)
            await self.node.publish(
                StreamStatusChanged(
                    job_id=self.stream_id,
                    tenant=self.tenant,
                    node=self.node.node_id,
                    state=state,
                    since=now,
                    reason=error if state == "offline" else None,
                    stream_meta_data=self.meta if state == "online" else None,
                )
            )
        return True


class MonitorNode(JobNode):
    """Every stream monitor this prober runs; the lease loop is the workers' (``JobNode``)."""

    module = "stream"
    service = "prober"
    collection = Collections.STREAMS
    claim_where = CLAIMABLE

    def __init__(self, ctx: ServiceContext[ProberSettings], engine: ProbeEngine) -> None:
        super().__init__(ctx)
        self.db = ctx.db
        self.bus: Bus = ctx.bus
        self.node_id = ctx.node_id
        self.engine = engine

    @property
    def max_jobs(self) -> int:
        return self.settings.max_monitors

    @property
    def reconcile_s(self) -> float:
        return self.settings.monitor_reconcile_s

    @property
    def claim_delay_s(self) -> float:
        return 0.0

    @property
    def monitors(self) -> dict[str, Any]:
        return self.runs

    async def make_run(self, lease: Lease) -> StreamMonitor:
        return StreamMonitor(self, lease)

    def stats(self) -> dict[str, Any]:
        return {"monitoring": sorted(self.runs)}

    async def publish(self, event: StreamStatusChanged) -> None:
        try:
            subject = self.bus.subjects.event("stream", event.job_id, "stream_status")
            await self.bus.publish(subject, event)
        except Exception as exc:
            self.log.warning("event_not_sent", stream_id=event.job_id, error=str(exc)[:200])
