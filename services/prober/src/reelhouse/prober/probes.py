"""ffprobe of live URLs: a deadline, a concurrency limit with a bounded queue, a short per-URL
cache and single flight (one ffprobe per URL at a time, whoever asks), and the NATS micro
service that answers ``<p>.req.prober.probe`` with it.

Admission: a probe that finds every slot busy waits in a queue of at most ``probe_queue``; a
probe beyond that is refused at once with 503 and ``Retry-After``. The deadline covers the wait
and the ffprobe run; a wait that eats the whole deadline is a 503 too (the source was never
asked). Monitoring probes share the slots but never count against the queue bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.micro
import structlog
from nats.micro.request import Request
from pydantic import TypeAdapter, ValidationError

from reelhouse.common import __version__
from reelhouse.common.bus import Bus
from reelhouse.common.contracts.streams import ProbeReply, ProbeRequest, ProbeUrl
from reelhouse.common.errors import (
    InternalError,
    ReelhouseError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
)
from reelhouse.common.ffmpeg.failures import request_error_class
from reelhouse.common.ffmpeg.probe import live_probe_args, run_ffprobe_outcome
from reelhouse.common.micro import respond_error
from reelhouse.common.netpolicy import (
    AddressRefused,
    ErrorClass,
    Unresolvable,
    checked_target,
)
from reelhouse.common.netproxy import FilteringProxy
from reelhouse.prober.settings import ProberSettings

RETRY_AFTER_S = 2
"""What a refused (busy) caller is told to wait, seconds: about one probe of a live source."""

_PROBE_URL: TypeAdapter[str] = TypeAdapter(ProbeUrl)

_SAYS: dict[ErrorClass, str] = {
    "unreachable": "could not be reached (unknown host, or no route to it)",
    "refused": "refused the connection or the request",
    "timeout": "did not answer in time",
    "not_media": "answered, but with nothing ffprobe can read as media",
    "forbidden_address": "led to an address the engine does not reach on a user's behalf",
}
"""What each error class says: a caller learns the class, never the upstream's own text."""


def upstream_error(shown: str, error_class: ErrorClass) -> UpstreamError:
    """A 502 for ``shown`` (a public URL) that reports ``error_class`` and nothing else."""
    return UpstreamError(
        f"{shown} {_SAYS[error_class]} ({error_class})", field="stream_url", reason=error_class
    )


def public_url(url: str) -> str:
    """``url`` without credentials and query (passphrases, stream keys in ``?streamid=``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def checked_url(url: str) -> str:
    """``url`` if it may be probed; :class:`ValidationFailed` naming ``stream_url`` otherwise."""
    try:
        return _PROBE_URL.validate_python(url)
    except ValidationError as exc:
        message = str(exc.errors()[0].get("msg", "invalid URL")).removeprefix("Value error, ")
        raise ValidationFailed(f"stream_url: {message}", field="stream_url") from None


class ProbeEngine:
    """Runs ffprobe for live URLs within this node's limits; counts what it does."""

    def __init__(self, settings: ProberSettings, *, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.policy = settings.net_policy()
        self._slots = asyncio.Semaphore(settings.probe_concurrency)
        self._cache: dict[str, tuple[float, ProbeReply | UpstreamError]] = {}
        self._inflight: dict[str, asyncio.Future[ProbeReply]] = {}
        self.waiting = 0
        self.running = 0
        self.started = 0
        """ffprobe processes started since this node started."""
        self.rejected = 0
        self.cache_hits = 0

    def deadline_for(self, requested: float | None) -> float:
        """The caller's deadline, or the default; never above the cap."""
        wanted = requested if requested and requested > 0 else self.settings.probe_timeout_s
        return min(wanted, self.settings.probe_timeout_max_s)

    def counters(self) -> dict[str, Any]:
        return {
            "ffprobe_started": self.started,
            "ffprobe_running": self.running,
            "waiting": self.waiting,
            "rejected": self.rejected,
            "cache_hits": self.cache_hits,
            "concurrency": self.settings.probe_concurrency,
            "queue": self.settings.probe_queue,
        }

    def _cached(self, url: str) -> ProbeReply | UpstreamError | None:
        entry = self._cache.get(url)
        if entry is None:
            return None
        at, value = entry
        if asyncio.get_running_loop().time() - at > self.settings.probe_cache_s:
            del self._cache[url]
            return None
        return value

    def _remember(self, url: str, value: ProbeReply | UpstreamError) -> None:
        if self.settings.probe_cache_s <= 0:
            return
        now = asyncio.get_running_loop().time()
        self._cache[url] = (now, value)
        if len(self._cache) > 1024:  # forget expired entries now and then
            for key, (at, _) in list(self._cache.items()):
                if now - at > self.settings.probe_cache_s:
                    del self._cache[key]

    async def probe(self, url: str, *, timeout_s: float, queued: bool = True) -> ProbeReply:
        """ffprobe ``url`` (already checked) within ``timeout_s``; raises the error tree.

        ``queued=False`` (monitoring) waits for a slot without counting against the queue bound.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            cached = self._cached(url)
            if cached is not None:
                self.cache_hits += 1
                if isinstance(cached, UpstreamError):
                    raise UpstreamError(cached.message, field="stream_url", reason=cached.reason)
                return cached.model_copy(update={"cached": True})
            leader = self._inflight.get(url)
            if leader is None:
                return await self._lead(url, deadline, queued)
            # Someone probes this URL now: share the answer instead of a second ffprobe.
            done, _ = await asyncio.wait({leader}, timeout=max(deadline - loop.time(), 0))
            if not done:
                raise UpstreamTimeout(
                    f"{public_url(url)} did not answer within {timeout_s:g} s (timeout)",
                    field="stream_url",
                    reason="timeout",
                )
            if not leader.cancelled():
                return leader.result()
            # The leader was cancelled (its monitor stopped): probe ourselves.

    async def _lead(self, url: str, deadline: float, queued: bool) -> ProbeReply:
        future: asyncio.Future[ProbeReply] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        self._inflight[url] = future
        try:
            reply = await self._run(url, deadline, queued)
        except ReelhouseError as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            if self._inflight.get(url) is future:
                del self._inflight[url]

    async def _run(self, url: str, deadline: float, queued: bool) -> ProbeReply:
        loop = asyncio.get_running_loop()
        try:
            live_probe_args(url)
        except ValueError as exc:
            raise ValidationFailed(f"stream_url: {exc}", field="stream_url") from None
        shown = public_url(url)
        # The policy looks at the resolved addresses; ffprobe gets the checked address (or, for
        # HTTP and TLS, the filtering proxy checks each connection it makes).
        try:
            target = await asyncio.wait_for(
                checked_target(self.policy, url, role="input"), max(deadline - loop.time(), 0.1)
            )
        except AddressRefused as exc:
            raise ValidationFailed(
                f"stream_url: {exc} (forbidden_address)",
                field="stream_url",
                reason="forbidden_address",
            ) from None
        except (Unresolvable, TimeoutError):
            error = upstream_error(shown, "unreachable")
            self._remember(url, error)
            raise error from None
        args = live_probe_args(target)
        if queued and self._slots.locked() and self.waiting >= self.settings.probe_queue:
            self.rejected += 1
            raise Unavailable(
                f"the prober is busy ({self.running} probes running, {self.waiting} waiting); "
                f"try again in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - loop.time(), 0))
        except TimeoutError:
            self.rejected += 1
            raise Unavailable(
                "the prober stayed busy for the whole deadline; the source was not asked; "
                f"try again in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        timeout_s = max(deadline - loop.time(), 0.1)
        proxy = FilteringProxy(self.policy, connect_timeout_s=timeout_s)
        try:
            await proxy.start()
            outcome = await run_ffprobe_outcome(
                args,
                timeout_s=timeout_s,
                ffprobe_path=self.settings.ffprobe_path,
                on_start=self._on_start,
                env=proxy.env(),
            )
        finally:
            await proxy.close()
            self.running -= 1
            self._slots.release()
        refused = proxy.first("forbidden_address")
        if refused is not None:
            # A redirect, a playlist entry or a re-resolved name pointed at a refused address.
            self.log_refusal(shown, refused.detail)
            error = upstream_error(shown, "forbidden_address")
            self._remember(url, error)
            raise error
        if outcome.timed_out:
            raise UpstreamTimeout(
                f"{shown} did not answer within {timeout_s:.3g} s (timeout)",
                field="stream_url",
                reason="timeout",
            )
        if outcome.data is None:
            failed = proxy.events[0].error_class if proxy.events else None
            error = upstream_error(shown, failed or request_error_class(outcome.stderr))
            self._remember(url, error)
            raise error
        fmt = dict(outcome.data.get("format") or {})
        fmt["filename"] = shown
        reply = ProbeReply(
            streams=list(outcome.data.get("streams") or []), format=fmt, node=self.node_id
        )
        self._remember(url, reply)
        return reply

    def log_refusal(self, shown: str, detail: str) -> None:
        structlog.get_logger("reelhouse.prober").info(
            "probe_address_refused", url=shown, detail=detail[:300]
        )

    def _on_start(self, _pid: int) -> None:
        self.started += 1


class ProbeService:
    """The NATS micro service ``<prefix>-prober`` with one endpoint, ``probe``."""

    def __init__(
        self,
        *,
        bus: Bus,
        engine: ProbeEngine,
        log: structlog.stdlib.BoundLogger,
        extra_stats: Any = None,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.log = log
        self._extra_stats = extra_stats
        self._service: nats.micro.Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        bus = self.bus
        self._service = await nats.micro.add_service(
            bus.nc,
            name=bus.subjects.probe_service_name(),
            version=__version__,
            description="ffprobe of live URLs with a deadline (Reelhouse prober)",
            metadata={"node": self.engine.node_id},
            stats_handler=self._stats,
        )
        await self._service.add_endpoint(
            name="probe", subject=bus.subjects.probe(), handler=self._handle, queue_group="prober"
        )

    def _stats(self, _endpoint: Any) -> dict[str, Any]:
        stats = self.engine.counters()
        if self._extra_stats is not None:
            stats.update(self._extra_stats())
        return stats

    async def _handle(self, request: Request) -> None:
        # The subscription's callbacks run one at a time: answer from a task of its own.
        task = asyncio.create_task(self._answer(request), name="probe-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: Request) -> None:
        try:
            try:
                message = ProbeRequest.model_validate_json(request.data)
            except ValidationError:
                raise ValidationFailed("not a probe request", field="stream_url") from None
            url = checked_url(message.url)
            timeout_s = self.engine.deadline_for(message.timeout_s)
            reply = await self.engine.probe(url, timeout_s=timeout_s)
            await request.respond(reply.model_dump_json().encode())
        except ReelhouseError as exc:
            self.log.info("probe_refused", code=exc.code, error=exc.message[:300])
            with contextlib.suppress(Exception):
                await respond_error(request, exc)
        except Exception:
            self.log.exception("probe_failed")
            with contextlib.suppress(Exception):
                await respond_error(request, InternalError("the probe failed; see the prober log"))

    async def stop(self) -> None:
        if self._service is not None:
            # Stopping drains the endpoint subscriptions: with NATS already gone (the whole stack
            # stopping together) that would wait out nats-py's drain timeout. Give it 2 s.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._service.stop(), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
