"""Channel watching (issue 22, docs/ARCHITECTURE.md §9): live checks with streamlink, one watcher
per enabled channel, and the channel's recording started and ended with its broadcasts.

An enabled channel is claimed by one prober (``jobs.lease``, as monitored streams are: an owner
key ``owners.channel.<id>`` in the live plane), so several prober replicas never check a channel
twice, and a check asked for through the API (``<p>.req.prober.channel_check``) waits for the
running one: never more than one check at a time per channel.

Each check resolves the channel with streamlink (a thread; ``channel_check_timeout_s``). Live
and within its rules (schedule, filters, quota), the channel's recording job gets the resolved URL
as its input and starts (:mod:`reelhouse.common.jobs.kinds`: a new session), a
``channel_recordings`` document is written and ``recording_started`` published. Offline for
``channel_grace_s`` ends the broadcast: the job stops (its session is joined and processed by the
recorder) and ``recording_ended`` is published; a broadcast that returns within the grace period
goes on in the same recording. A rule that says no publishes its ``*_skip`` once per broadcast.
Checks run every ``channel_interval_s``; failed checks back off (doubling, jittered, up to
``channel_backoff_max_s``). The result of every check is the channel's key in the live plane
(``progress.channel.<id>``); the channel document changes only when its status does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

from bson import ObjectId
from pydantic import ValidationError

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.channels import (
    ChannelCheck,
    ChannelEvent,
    ChannelFilters,
    ChannelIn,
    LiveInfo,
)
from reelhouse.common.contracts.media import Schedule
from reelhouse.common.contracts.storage import CleanupRequest
from reelhouse.common.credentials import (
    StreamlinkAuth,
    cached_sealer,
    load_auth,
    mark_expired,
    publish_auth_event,
    refused_status,
)
from reelhouse.common.events import MODEL_BY_TYPE
from reelhouse.common.ffmpeg.capabilities import PROTOCOL_WHITELIST
from reelhouse.common.ffmpeg.probe import run_ffprobe_outcome
from reelhouse.common.jobs import kinds
from reelhouse.common.jobs.lease import Lease
from reelhouse.common.jobs.node import JobNode
from reelhouse.common.micro import call
from reelhouse.common.mongo import Collections
from reelhouse.common.netproxy import FilteringProxy
from reelhouse.common.schedule import inside
from reelhouse.common.service import ServiceContext
from reelhouse.common.subjects import Event
from reelhouse.prober.settings import ProberSettings


@dataclass
class Resolved:
    """What streamlink says of a channel right now."""

    live: bool
    stream_url: str | None = None
    title: str | None = None
    category: str | None = None
    error: str | None = None
    """A check that failed (not merely offline): the platform, the plugin or the network."""
    probe_url: str | None = None
    """What ffprobe reads for the stream's own title: an HLS stream's newest media segment (the
    HLS demuxer hides the segments' program tags), else the stream URL itself."""
    refused: int | None = None
    """401 or 403: the platform refused the request (its credentials, or their absence)."""


def resolve(
    url: str, platform: str, quality: str, timeout_s: float, auth: StreamlinkAuth | None = None
) -> Resolved:
    """Resolve ``url`` with streamlink (blocking: run it in a thread), presenting ``auth`` (the
    tenant's credentials for the platform) when given."""
    from streamlink import Streamlink
    from streamlink.exceptions import NoPluginError, PluginError

    auth = auth or StreamlinkAuth()
    session = Streamlink(
        options={"http-timeout": timeout_s, "hls-timeout": timeout_s, **auth.session}
    )
    try:
        try:
            _name, plugin_class, resolved = session.resolve_url(url)
        except NoPluginError:
            if platform != "url":
                return Resolved(live=False, error=f"streamlink has no plugin for {platform} URLs")
            _name, plugin_class, resolved = session.resolve_url(f"hls://{url}")
        plugin = plugin_class(session, resolved, dict(auth.plugin))
        streams = plugin.streams()
    except PluginError as exc:
        # The generic HLS/HTTP handling cannot tell "offline" from "gone": an origin that does not
        # answer is an offline channel. A platform plugin's error is a failed check, and so is
        # a refusal (401/403) anywhere.
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        refused = refused_status(exc)
        if refused is not None:
            error = f"the platform refused the request (HTTP {refused}): {text}"
            return Resolved(live=False, refused=refused, error=error)
        return Resolved(live=False, error=None if platform == "url" else text)
    if not streams:
        return Resolved(live=False)
    chosen = next((streams[q] for q in quality.split(",") if q in streams), None)
    if chosen is None:
        chosen = streams.get("best") or next(iter(streams.values()))
    stream_url = getattr(chosen, "url", None)
    if not stream_url:
        return Resolved(live=False, error="the stream has no URL FFmpeg can read")
    stream_url = str(stream_url)
    return Resolved(
        live=True,
        stream_url=stream_url,
        title=_text(plugin.get_title()),
        category=_text(plugin.get_category()),
        probe_url=_newest_segment(session, stream_url, timeout_s) or stream_url,
    )


def _newest_segment(session: Any, url: str, timeout_s: float) -> str | None:
    """The newest segment of an HLS media playlist (None: not a media playlist, or no answer)."""
    try:
        text = session.http.get(url, timeout=timeout_s).text
    except Exception:
        return None
    if "#EXTM3U" not in text or "#EXT-X-STREAM-INF" in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return urljoin(url, lines[-1]) if lines else None


_DEFAULT_SERVICE = re.compile(r"^Service\d+$")
"""The service name FFmpeg's MPEG-TS muxer writes when it is given none: not a title."""


def stream_title(probed: dict[str, Any] | None) -> str | None:
    """The title a stream carries: the container's ``title`` tag, else the MPEG-TS service name
    (``service_name`` of the program; FFmpeg sets both with ``-metadata``)."""
    if not probed:
        return None
    title = (probed.get("format") or {}).get("tags", {}).get("title")
    if title:
        return _text(title)
    for program in probed.get("programs") or []:
        name = (program.get("tags") or {}).get("service_name")
        if name and not _DEFAULT_SERVICE.match(name):
            return _text(name)
    return None


def _text(value: Any) -> str | None:
    return str(value)[:500] if value else None


@dataclass
class Broadcast:
    """The broadcast a watcher is following (from first seen live until offline past grace)."""

    started_at: datetime
    title: str | None = None
    category: str | None = None
    recording_id: ObjectId | None = None
    skipped: set[str] = field(default_factory=set)
    """``*_skip`` events already sent for this broadcast."""
    stopped: bool = False
    """Its recording was stopped by a person: not recorded again until it ends."""
    offline_since: float | None = None


class ChannelWatcher:
    """Checks one claimed channel until stopped (a :class:`~reelhouse.common.jobs.node.JobRun`)."""

    def __init__(self, node: ChannelNode, lease: Lease) -> None:
        self.node = node
        self.lease = lease
        self.job_id = self.channel_id = str(lease.job_id)
        doc = lease.doc
        self.tenant: str = doc.get("tenant", "default")
        self.config = ChannelIn.model_validate({k: doc[k] for k in ChannelIn.model_fields
                                                if k in doc})  # fmt: skip
        self.recording_job_id: str = str(doc["job_id"])
        self.status: str | None = doc.get("status")
        self.broadcast: Broadcast | None = None
        self.last: LiveInfo | None = None
        self.lock = asyncio.Lock()
        self.failures = 0
        self.task: asyncio.Task[None] | None = None
        self._stopping = False
        self.log = node.log.bind(channel_id=self.channel_id)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        # A recording left open by the previous watcher (an update or a handover) goes on.
        open_rec = await self.node.db[Collections.CHANNEL_RECORDINGS].find_one(
            {"channel_id": self.channel_id, "ended_at": None}, sort=[("started_at", -1)]
        )
        if open_rec is not None:
            self.broadcast = Broadcast(started_at=open_rec["started_at"],
                                       title=open_rec.get("title"),
                                       category=open_rec.get("category"),
                                       recording_id=open_rec["_id"])  # fmt: skip
        self.task = asyncio.create_task(self.run(), name=f"channel-{self.channel_id}")
        self.log.info("channel_watch_started", recording=open_rec is not None)

    async def stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        node = self.node
        try:
            doc = await node.db[Collections.CHANNELS].find_one(
                {"_id": self.lease.job_id}, {"active": 1}
            )
            if doc is None or not doc.get("active"):
                # Disabled or deleted: the recording ends; otherwise another watcher adopts it.
                async with self.lock:
                    if self.broadcast is not None and self.broadcast.recording_id is not None:
                        await self._end_recording("channel disabled")
                    if doc is not None:
                        await self._set_status("disabled", None)
            await node.leases.release(self.lease)
        except Exception as exc:
            node.log.warning("channel_watch_end_failed", channel_id=self.channel_id,
                             error=str(exc)[:200])  # fmt: skip
        node.log.info("channel_watch_stopped", channel_id=self.channel_id, reason=reason)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # MongoDB or NATS away: try again later
                self.failures += 1
                self.log.warning("channel_check_failed", error=str(exc).splitlines()[0][:200])
            await asyncio.sleep(self.next_delay() * random.uniform(0.9, 1.1))  # noqa: S311 (jitter)

    def next_delay(self) -> float:
        """Seconds to the next check (before jitter): the interval, or the backoff after
        failed checks."""
        settings = self.node.settings
        if not self.failures:
            return settings.channel_interval_s
        backoff = settings.channel_interval_s * 2 ** min(self.failures, 10)
        return min(backoff, settings.channel_backoff_max_s)

    def result_ttl_s(self) -> int:
        """How long this check's result (``progress.channel.<id>``) lives: past the next check
        (its delay with jitter, plus the check's own deadline), so ``last_checked`` does not
        vanish between checks, yet goes stale when no prober watches the channel any more."""
        timeout = self.node.settings.channel_check_timeout_s
        return math.ceil(1.1 * self.next_delay() + 2 * timeout) + 5

    async def check(self) -> LiveInfo:
        """One live check and what follows from it (one at a time per channel)."""
        async with self.lock:
            settings = self.node.settings
            try:
                auth = await load_auth(self.node.db, self.node.sealer, tenant=self.tenant,
                                       platform=self.config.platform)  # fmt: skip
            except Exception as exc:  # a key that does not open them: checked without them
                self.log.warning("platform_auth_unreadable", error=str(exc)[:200])
                auth = StreamlinkAuth()
            try:
                found = await asyncio.wait_for(
                    asyncio.to_thread(resolve, self.config.source_url(), self.config.platform,
                                      self.config.quality, settings.channel_check_timeout_s,
                                      auth),
                    settings.channel_check_timeout_s * 2,
                )  # fmt: skip
            except TimeoutError:
                found = Resolved(live=False, error="the live check timed out")
            except Exception as exc:
                found = Resolved(live=False, error=f"{type(exc).__name__}: {exc}"[:300])
            if found.live and found.title is None and found.probe_url:
                found.title = await self._stream_title(found.probe_url)
            self.failures = self.failures + 1 if found.error else 0
            if found.refused and auth.auth_id is not None:
                await self._auth_refused(auth, found)
            await self._apply(found)
            assert self.last is not None
            return self.last

    async def _auth_refused(self, auth: StreamlinkAuth, found: Resolved) -> None:
        """The platform refused the stored credentials: mark them expired and say so, once."""
        reason = found.error or f"HTTP {found.refused}"
        try:
            if not await mark_expired(self.node.db, auth.auth_id, reason):
                return
            self.log.warning("platform_auth_expired", platform=self.config.platform, reason=reason)
            await publish_auth_event(self.node.bus, "platform_auth_expired", auth=auth.auth_id,
                                     tenant=self.tenant, platform=self.config.platform,
                                     channel_id=self.channel_id, reason=reason,
                                     node=self.node.node_id)  # fmt: skip
        except Exception as exc:
            self.log.warning("event_not_sent", event_name="platform_auth_expired",
                             error=str(exc)[:200])  # fmt: skip

    async def _stream_title(self, url: str) -> str | None:
        """The title the stream itself carries (ffprobe through the URL policy's proxy); None
        when it has none or cannot be read in time (the check goes on without it)."""
        settings = self.node.settings
        args = ["-show_format", "-show_programs",
                "-protocol_whitelist", ",".join(PROTOCOL_WHITELIST["INPUT_TYPE_HLS_URL"]),
                "-i", url]  # fmt: skip
        proxy = FilteringProxy(self.node.policy, connect_timeout_s=settings.monitor_timeout_s)
        try:
            await proxy.start()
            outcome = await run_ffprobe_outcome(args, timeout_s=settings.monitor_timeout_s,
                                                ffprobe_path=settings.ffprobe_path,
                                                env=proxy.env())  # fmt: skip
        except Exception as exc:
            self.log.warning("channel_title_probe_failed", error=str(exc)[:200])
            return None
        finally:
            await proxy.close()
        return stream_title(outcome.data)

    async def _apply(self, found: Resolved) -> None:
        now = utcnow()
        status = "offline"
        if found.error:
            status = "error"
            if self.status != "error":
                await self._publish("channel_error", reason=found.error)
        if found.live:
            status = await self._live(found, now)
        elif self.broadcast is not None:
            b = self.broadcast
            b.offline_since = b.offline_since or time.monotonic()
            if time.monotonic() - b.offline_since >= self.node.settings.channel_grace_s:
                if b.recording_id is not None:
                    await self._end_recording("offline")
                self.broadcast = None
            elif b.recording_id is not None:
                status = "recording"  # within the grace period: the same recording goes on
        b = self.broadcast
        self.last = LiveInfo(
            channel_id=self.channel_id, live=found.live, title=found.title,
            category=found.category, started_at=b.started_at if b else None, status=status,
            checked_at=now, error=found.error, node=self.node.node_id,
        )  # fmt: skip
        with contextlib.suppress(Exception):
            await self.node.live.put_progress(
                "channel",
                self.channel_id,
                self.last.model_dump_json().encode(),
                ttl_s=self.result_ttl_s(),
            )
        await self._set_status(status, found.error, live=found.live, now=now)

    async def _live(self, found: Resolved, now: datetime) -> str:
        b = self.broadcast
        if b is None:
            b = self.broadcast = Broadcast(started_at=now, title=found.title,
                                           category=found.category)  # fmt: skip
            self.log.info("channel_live", title=found.title, category=found.category)
        b.offline_since = None
        if b.recording_id is not None:
            rec = await self.node.db[Collections.CHANNEL_RECORDINGS].find_one(
                {"_id": b.recording_id}, {"ended_at": 1}
            )
            if rec is None or rec.get("ended_at") is not None:
                b.recording_id, b.stopped = None, True  # stopped through the API
                return "live"
            if (found.title, found.category) != (b.title, b.category):
                await self._chapter(b, found, now)
            return "recording"
        b.title, b.category = found.title, found.category
        if b.stopped or self.node.ctx.shutting_down:
            return "live"  # stopped by a person, or the stack is shutting down
        refusal = await self._refusal(found, now)
        if refusal is not None:
            event, reason = refusal
            if event not in b.skipped:
                b.skipped.add(event)
                self.log.info(event, reason=reason)
                await self._publish(event, reason=reason, title=found.title,
                                    category=found.category)  # fmt: skip
            return "live"
        assert found.stream_url is not None
        await self._start_recording(b, found, now)
        return "recording"

    async def _refusal(self, found: Resolved, now: datetime) -> tuple[Event, str] | None:
        cfg = self.config
        if cfg.schedule is not None and not inside(Schedule.model_validate(cfg.schedule), now):
            return "schedule_skip", "live outside the channel's schedule windows"
        reason = ChannelFilters.model_validate(cfg.filters).refusal(found.title, found.category)
        if reason is not None:
            return "filter_skip", reason
        if cfg.quota_bytes:
            used = await self.used_bytes()
            if used >= cfg.quota_bytes and cfg.delete_after:
                # Retention first: files past the channel's delete_after may make room.
                evicted = await self._evict()
                used = await self.used_bytes()
                self.log.info("channel_quota_eviction", evicted=evicted, used=used)
            await self._quota_status(used)
            if used >= cfg.quota_bytes:
                return "quota_skip", f"the channel's files hold {used} of {cfg.quota_bytes} bytes"
        return None

    async def _evict(self) -> int:
        """A janitor pass now (retention: ``delete_after`` and the job's limits); how many files
        it deleted (0 when no janitor answers in time: the quota decides without it)."""
        try:
            deadline = self.node.settings.channel_check_timeout_s * 2
            data = await call(self.node.bus, self.node.bus.subjects.janitor_cleanup(),
                              CleanupRequest(), timeout_s=deadline, what="the janitor")  # fmt: skip
            return len(json.loads(data).get("deleted") or [])
        except Exception as exc:
            self.log.warning("channel_quota_eviction_failed", error=str(exc)[:200])
            return 0

    quota_state: str | None = None

    async def _quota_status(self, used: int) -> None:
        """``quota_status_changed`` when the channel's files cross 90 % (``warning``) or 100 %
        (``exceeded``) of its quota, or fall back under them (``ok``)."""
        quota = self.config.quota_bytes
        state = "ok"
        if quota and used >= quota:
            state = "exceeded"
        elif quota and used >= 0.9 * quota:
            state = "warning"
        if self.quota_state is None:
            self.quota_state = self.lease.doc.get("quota_status") or "ok"
        if state == self.quota_state:
            return
        self.quota_state = state
        with contextlib.suppress(Exception):
            await self.node.db[Collections.CHANNELS].update_one(
                {"_id": self.lease.job_id}, {"$set": {"quota_status": state}}
            )
        await self._publish("quota_status_changed", reason=state,
                            extra={"quota_status": state, "used_bytes": used,
                                   "quota_bytes": quota})  # fmt: skip

    async def used_bytes(self) -> int:
        """Bytes of the channel's files (not deleted)."""
        total = 0
        cursor = self.node.db[Collections.FILES].find(
            {"entity_id": self.recording_job_id}, {"size_bytes": 1, "status": 1}
        )
        async for record in cursor:
            if record.get("status") != "deleted":
                total += int(record.get("size_bytes") or 0)
        return total

    async def _start_recording(self, b: Broadcast, found: Resolved, now: datetime) -> None:
        db = self.node.db
        assert found.stream_url is not None
        source = kinds.channel_input(self.config.source_url(), self.config.quality)
        await kinds.set_input(db, kinds.RECORDING, self.recording_job_id, source)
        generation = await kinds.set_active(
            db, self.node.bus, kinds.RECORDING, self.recording_job_id, active=True
        )
        rec_id = ObjectId()
        doc = {
            "_id": rec_id, "tenant": self.tenant, "channel_id": self.channel_id,
            "channel_name": self.config.name, "platform": self.config.platform,
            "job_id": self.recording_job_id, "title": found.title, "category": found.category,
            "broadcast_started_at": b.started_at, "started_at": now, "ended_at": None,
            "session": generation, "chapters": [{"at": now, "title": found.title,
                                                 "category": found.category}],
            "created": now, "modified": now,
        }  # fmt: skip
        await db[Collections.CHANNEL_RECORDINGS].insert_one(doc)
        b.recording_id = rec_id
        self.log.info("channel_recording_started", recording_id=str(rec_id), session=generation)
        await self._publish("recording_started", recording_id=str(rec_id), title=found.title,
                            category=found.category)  # fmt: skip

    async def _chapter(self, b: Broadcast, found: Resolved, now: datetime) -> None:
        b.title, b.category = found.title, found.category
        await self.node.db[Collections.CHANNEL_RECORDINGS].update_one(
            {"_id": b.recording_id},
            {"$push": {"chapters": {"at": now, "title": found.title, "category": found.category}},
             "$set": {"modified": now}},
        )  # fmt: skip

    async def _end_recording(self, reason: str) -> None:
        b = self.broadcast
        assert b is not None
        assert b.recording_id is not None
        db, now = self.node.db, utcnow()
        await kinds.set_active(db, self.node.bus, kinds.RECORDING, self.recording_job_id,
                               active=False)  # fmt: skip
        result = await db[Collections.CHANNEL_RECORDINGS].update_one(
            {"_id": b.recording_id, "ended_at": None},
            {"$set": {"ended_at": now, "end_reason": reason, "modified": now}},
        )
        rec_id, b.recording_id = str(b.recording_id), None
        if result.modified_count:
            self.log.info("channel_recording_ended", recording_id=rec_id, reason=reason)
            await self._publish("recording_ended", recording_id=rec_id, reason=reason,
                                title=b.title, category=b.category)  # fmt: skip

    async def _set_status(
        self, status: str, error: str | None, *, live: bool = False, now: datetime | None = None
    ) -> None:
        now = now or utcnow()
        fields: dict[str, Any] = {}
        if live:
            fields["last_live"] = now
        if status == self.status and not fields:
            return
        changed = status != self.status
        fields.update(status=status, last_checked=now)
        if error:
            fields["last_error"] = error
        # Still live: ``last_live`` is refreshed at most once a minute (the live plane has every
        # check).
        written = self.last_live_written
        if not changed and written and (now - written).total_seconds() < 60:
            return
        await self.node.db[Collections.CHANNELS].update_one(
            {"_id": self.lease.job_id}, {"$set": fields}
        )
        if live:
            self.last_live_written = now
        if changed:
            self.status = status
            self.log.info("channel_status", status=status, error=error)
            await self._publish("channel_status", reason=error)

    last_live_written: datetime | None = None

    async def _publish(self, event: Event, **fields: Any) -> None:
        model = MODEL_BY_TYPE[event]
        if not issubclass(model, ChannelEvent):  # schedule_skip: a job's event, a channel's too
            model = ChannelEvent
        message = model(
            type=event, channel_id=self.channel_id, job_id=self.channel_id,
            recording_job_id=self.recording_job_id, tenant=self.tenant,
            node=self.node.node_id, status=self.status, platform=self.config.platform, **fields,
        )  # fmt: skip
        try:
            await self.node.bus.publish(
                self.node.bus.subjects.event("channel", self.channel_id, event), message
            )
        except Exception as exc:
            self.log.warning("event_not_sent", event_name=event, error=str(exc)[:200])


class ChannelNode(JobNode):
    """Every channel this prober watches; the lease loop is the workers' (``JobNode``)."""

    module = "channel"
    service = "prober"
    collection = Collections.CHANNELS

    def __init__(self, ctx: ServiceContext[ProberSettings]) -> None:
        super().__init__(ctx)
        self.db = ctx.db
        self.bus: Bus = ctx.bus
        self.node_id = ctx.node_id
        self.policy = ctx.settings.net_policy()
        self.sealer = cached_sealer(ctx.settings)
        self.ctx = ctx

    @property
    def max_jobs(self) -> int:
        return self.settings.max_channels

    @property
    def reconcile_s(self) -> float:
        return self.settings.channel_reconcile_s

    @property
    def claim_delay_s(self) -> float:
        return 0.0

    async def make_run(self, lease: Lease) -> ChannelWatcher:
        return ChannelWatcher(self, lease)

    async def serve_checks(self) -> Any:
        """Answer ``channel_check`` requests for the channels this node watches."""

        async def on_request(msg: Any) -> None:
            try:
                ask = ChannelCheck.model_validate_json(msg.data)
            except ValidationError:
                return
            run = self.runs.get(ask.channel_id)
            owner = self.live.owners.get(("channel", ask.channel_id))
            if run is None and owner is not None and owner.node == self.node_id:
                # Claimed by this node a moment ago: its watcher is starting.
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    if (run := self.runs.get(ask.channel_id)) is not None:
                        break
            if not isinstance(run, ChannelWatcher) or run.tenant != ask.tenant or run.stopping:
                return  # another prober watches it (or nobody: the caller times out)
            try:
                info = await run.check()
            except Exception as exc:
                info = LiveInfo(channel_id=ask.channel_id, live=False, status="error",
                                error=str(exc)[:300], node=self.node_id)  # fmt: skip
            with contextlib.suppress(Exception):
                await msg.respond(info.model_dump_json().encode())

        return await self.bus.nc.subscribe(self.bus.subjects.channel_check(), cb=on_request)
