"""The events stream (JetStream) and what the WebSocket relay and webhooks share.

Services publish events with core NATS on ``<p>.evt.<module>.<job_id>.<event>`` (and
``<p>.evt.storage.*``, ``<p>.evt.system.*`` for events of no job). The JetStream stream
``<PREFIX>_EVENTS`` captures ``<p>.evt.>`` and keeps it for ``events_max_age_s``; the API creates
it at start if it is missing (idempotent; several replicas may race). An event's **id** is its
stream sequence: increasing, unique per deployment, and the place a client resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from reelhouse.common.bus import Bus
from reelhouse.common.logging import get_logger
from reelhouse.common.subjects import EVENTS, MODULES

log = get_logger("reelhouse.api.events")

SYSTEM_MODULES = ("storage", "system", "auth")
"""Pseudo-modules of events that belong to no job (``auth`` events carry a ``tenant``: only
that tenant sees them)."""


async def ensure_events_stream(bus: Bus, *, max_age_s: float) -> None:
    """Create the events stream if it does not exist; keep its max age in step with settings."""
    js = bus.nc.jetstream()
    name = bus.subjects.events_stream_name()
    config = StreamConfig(
        name=name,
        subjects=[bus.subjects.all_events()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age_s,
        description="Reelhouse events, kept by age (the API resumes clients from it).",
    )
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("events_stream_created", stream=name, max_age_s=max_age_s)
            return
        except Exception:  # another replica made it first
            info = await js.stream_info(name)
    if info.config.max_age != max_age_s:
        info.config.max_age = max_age_s
        await js.update_stream(info.config)


async def run_events_stream(
    bus: Bus, *, max_age_s: float, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    """Lifespan task: ensure the stream once NATS answers (retrying while it does not)."""
    while not stop.is_set():
        if await bus.wait_connected(timeout=1.0):
            try:
                await ensure_events_stream(bus, max_age_s=max_age_s)
                ready.set()
                return
            except Exception as exc:
                log.warning("events_stream_unavailable", error=str(exc)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def subject_parts(prefix: str, subject: str) -> tuple[str, str | None, str]:
    """``(module, job_id|None, event)`` of an event subject."""
    tokens = subject[len(prefix) + 1 :].split(".")  # evt.<module>.<job>.<event> | evt.<m>.<event>
    if len(tokens) == 4:
        return tokens[1], tokens[2], tokens[3]
    return tokens[1] if len(tokens) > 1 else "", None, tokens[-1]


def decode(data: bytes) -> dict[str, Any] | None:
    """An event payload as a dict, or None if it is not JSON."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def visible_to(payload: dict[str, Any], tenant: str) -> bool:
    """A job event goes only to its tenant; events of no job (no tenant) go to everyone."""
    owner = payload.get("tenant")
    return owner is None or owner == tenant


_DIMENSIONS = ("modules", "job_ids", "events", "channel_ids")


@dataclass
class EventFilter:
    """What one client (or webhook) wants: ``None`` = anything; an empty set = nothing."""

    modules: set[str] | None = None
    job_ids: set[str] | None = None
    events: set[str] | None = None
    stats: bool = False
    channel_ids: set[str] | None = None
    """Only events of these channels: the channel's own and its recording job's (issue 22)."""
    channel_jobs: set[str] = field(default_factory=set)
    """The recording jobs of ``channel_ids`` (set by the relay, which looks them up)."""
    _known: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "modules": (*MODULES, *SYSTEM_MODULES),
            "events": EVENTS,
        },
        repr=False,
    )

    def matches(
        self,
        module: str,
        job_id: str | None,
        event: str | None = None,
        channel_id: str | None = None,
    ) -> bool:
        if self.modules is not None and module not in self.modules:
            return False
        if (
            self.channel_ids is not None
            and channel_id not in self.channel_ids
            and (job_id is None or job_id not in self.channel_jobs)
        ):
            return False
        # An event of no job passes a job filter only if the client asked for its module.
        outside = self.job_ids is not None and (job_id is None or job_id not in self.job_ids)
        asked = job_id is None and self.modules is not None and module in self.modules
        if outside and not asked:
            return False
        return not (event is not None and self.events is not None and event not in self.events)

    def _values(self, message: dict[str, Any], key: str) -> set[str] | None:
        raw = message.get(key)
        if raw is None:
            return None
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise ValueError(f"{key}: must be a list of strings")
        known = self._known.get(key)
        if known is not None:
            bad = [v for v in raw if v not in known]
            if bad:
                raise ValueError(f"{key}: unknown {bad[0]!r}; expected one of {', '.join(known)}")
        return set(raw)

    def subscribe(self, message: dict[str, Any]) -> None:
        """Widen: add the given modules/job ids/events; ``stats: true`` turns stats on.
        A ``subscribe`` without any of them resets to everything of the tenant."""
        given = {k: self._values(message, k) for k in _DIMENSIONS}
        if all(v is None for v in given.values()) and "stats" not in message:
            self.modules = self.job_ids = self.events = self.channel_ids = None
        for key, values in given.items():
            if values is not None:
                current = getattr(self, key)
                setattr(self, key, values if current is None else current | values)
        if message.get("stats") is True:
            self.stats = True

    def unsubscribe(self, message: dict[str, Any]) -> None:
        """Narrow: remove the given items (an emptied dimension matches nothing);
        ``stats: true`` turns stats off; without any field: nothing at all."""
        given = {k: self._values(message, k) for k in _DIMENSIONS}
        if all(v is None for v in given.values()) and "stats" not in message:
            self.modules, self.job_ids, self.events, self.stats = set(), set(), set(), False
            self.channel_ids = set()
            return
        for key, values in given.items():
            if values is not None:
                current = getattr(self, key)
                if current is None:
                    known = self._known.get(key)
                    if known is None:  # "all job ids but these" is not expressible: nothing
                        setattr(self, key, set())
                        continue
                    current = set(known)
                setattr(self, key, current - values)
        if message.get("stats") is True:
            self.stats = False

    def describe(self) -> dict[str, Any]:
        def out(v: set[str] | None) -> list[str] | None:
            return None if v is None else sorted(v)

        return {
            "modules": out(self.modules),
            "job_ids": out(self.job_ids),
            "events": out(self.events),
            "channel_ids": out(self.channel_ids),
            "stats": self.stats,
        }
