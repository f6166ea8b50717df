"""Monitoring of started streams: claim by lease, probe periodically, keep the row current.

A stream row with ``active: true`` and a ``stream_url`` is claimed by one prober
(``jobs.lease``, as recordings are: claim, batched renewal every ``lease/3``, release), so
several prober replicas never monitor one stream twice. Its monitor probes the URL every
``monitor_interval_s`` (sharing the node's ffprobe slots) and writes, only when something
changed and only while it still holds the lease:

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

from pydantic import ValidationError

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.contracts.streams import ProbeReply, StreamStatusChanged
from reelhouse.common.errors import ReelhouseError, Unavailable
from reelhouse.common.jobs.lease import Lease, LeaseStore
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
    """Probes one claimed stream until cancelled."""

    def __init__(self, node: MonitorNode, lease: Lease) -> None:
        self.node = node
        self.lease = lease
        self.stream_id = str(lease.job_id)
        self.url: str = lease.doc["stream_url"]
        self.tenant: str = lease.doc.get("tenant", "default")
        status = lease.doc.get("status") or {}
        self.state: str | None = status.get("state")
        self.status_node: str | None = status.get("node")
        self.meta: dict[str, Any] = lease.doc.get("stream_meta_data") or {}
        self.failures = 0
        self.task: asyncio.Task[None] | None = None

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
                        self.node.lost(self)
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


class MonitorNode:
    """Every stream monitor this prober runs, and the lease loop that owns them."""

    def __init__(self, ctx: ServiceContext[ProberSettings], engine: ProbeEngine) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.log = ctx.log
        self.db = ctx.db
        self.bus: Bus = ctx.bus
        self.node_id = ctx.node_id
        self.engine = engine
        self.leases = LeaseStore(
            db=ctx.db,
            collection=Collections.STREAMS,
            node_id=ctx.node_id,
            lease_s=ctx.settings.monitor_lease_s,
        )
        self.monitors: dict[str, StreamMonitor] = {}
        self._wake = asyncio.Event()
        self._hinted: set[str] = set()
        self._endings: set[asyncio.Task[None]] = set()

    def stats(self) -> dict[str, Any]:
        return {"monitoring": sorted(self.monitors)}

    async def publish(self, event: StreamStatusChanged) -> None:
        try:
            subject = self.bus.subjects.event("stream", event.job_id, "stream_status")
            await self.bus.publish(subject, event)
        except Exception as exc:
            self.log.warning("event_not_sent", stream_id=event.job_id, error=str(exc)[:200])

    async def run(self) -> None:
        """Serve until the service stops; then hand every stream over (release its lease)."""
        hints = asyncio.create_task(self._subscribe(), name="hints")
        try:
            await self._loop()
        finally:
            hints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints
            for monitor in list(self.monitors.values()):
                await self._end(monitor, reason="shutdown")
            if self._endings:
                await asyncio.gather(*self._endings, return_exceptions=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self.settings.monitor_lease_s / 3
        reconcile_s = min(2.0, renew_every)
        next_renew = loop.time() + renew_every
        while not self.ctx.stop.is_set():
            hinted = self._wake.is_set()
            self._wake.clear()
            if hinted:
                await self._check(self._take_hinted())
            if loop.time() >= next_renew:
                await self._check(list(self.monitors.values()))
                next_renew = loop.time() + renew_every
            await self._claim()
            self.ctx.node.running_jobs = len(self.monitors)
            timeout = min(reconcile_s, max(0.0, next_renew - loop.time()))
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.ctx.stop.wait()),
            }
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    def _take_hinted(self) -> list[StreamMonitor]:
        hinted, self._hinted = self._hinted, set()
        return [m for m in (self.monitors.get(i) for i in hinted) if m is not None]

    async def _check(self, monitors: list[StreamMonitor]) -> None:
        """Renew these leases in one round trip; stop the monitors whose lease is gone."""
        if not monitors:
            return
        try:
            lost = await self.leases.renew_many([m.lease for m in monitors])
        except Exception as exc:
            self.log.warning("lease_renew_failed", streams=len(monitors), error=str(exc)[:200])
            return
        for monitor in monitors:
            if monitor.lease.job_id in lost:
                await self._end(monitor, reason="lost")

    async def _claim(self) -> None:
        while len(self.monitors) < self.settings.max_monitors and not self.ctx.stop.is_set():
            try:
                lease = await self.leases.claim(where=CLAIMABLE)
            except Exception as exc:
                self.log.warning("claim_failed", error=str(exc).splitlines()[0][:200])
                return
            if lease is None:
                return
            monitor = StreamMonitor(self, lease)
            self.monitors[monitor.stream_id] = monitor
            monitor.task = asyncio.create_task(monitor.run(), name=f"monitor-{monitor.stream_id}")
            self.log.info("stream_monitor_started", stream_id=monitor.stream_id)

    def lost(self, monitor: StreamMonitor) -> None:
        """Called by a monitor whose write found its lease gone."""
        task = asyncio.create_task(self._end(monitor, reason="lost"))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def _end(self, monitor: StreamMonitor, *, reason: str) -> None:
        if self.monitors.get(monitor.stream_id) is not monitor:
            return
        del self.monitors[monitor.stream_id]
        if monitor.task is not None and monitor.task is not asyncio.current_task():
            monitor.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await monitor.task
        streams = self.db[Collections.STREAMS]
        try:
            if reason != "shutdown":
                # Stopped (not updated or taken over): monitoring ends, so does the status.
                ended = await streams.update_one(
                    {"_id": monitor.lease.job_id, "active": False, "status": {"$exists": True}},
                    {"$unset": {"status": ""}},
                )
                if ended.matched_count:
                    await self.publish(
                        StreamStatusChanged(
                            job_id=monitor.stream_id,
                            tenant=monitor.tenant,
                            node=self.node_id,
                            state="unmonitored",
                            since=utcnow(),
                        )
                    )
            await self.leases.release(monitor.lease.job_id)
        except Exception as exc:
            self.log.warning("monitor_end_failed", stream_id=monitor.stream_id, error=str(exc))
        self.log.info("stream_monitor_stopped", stream_id=monitor.stream_id, reason=reason)
        self.ctx.node.running_jobs = len(self.monitors)
        self._wake.set()  # the stream may be claimable again (update, restart)

    async def _subscribe(self) -> None:
        bus = self.bus
        while not await bus.wait_connected(timeout=1.0):
            if self.ctx.stop.is_set():
                return

        async def on_hint(msg: Any) -> None:
            try:
                command = JobCommand.model_validate_json(msg.data)
            except ValidationError:
                self.log.warning("hint_invalid", subject=msg.subject)
                return
            if command.module == "stream":
                self._hinted.add(command.job_id)
                self._wake.set()

        sub = await bus.nc.subscribe(bus.subjects.commands("prober"), cb=on_hint)
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
