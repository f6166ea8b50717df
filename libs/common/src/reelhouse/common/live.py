"""The live plane: one NATS JetStream key-value bucket (docs/ARCHITECTURE.md §2).

Keys (built by :class:`reelhouse.common.subjects.Subjects`; ``<node>`` with dots made ``_``)::

    nodes.<service>.<node>     heartbeat every ``heartbeat_s``, per-key TTL ``ttl_s``
    owners.<kind>.<job_id>     who runs a job: created by the claim, taken over by compare-and-set
    progress.<kind>.<job_id>   a running job's last stats, about once a second (TTL: 5 * ttl_s)
    ingest.<server_id>.<token> an ingest contribution (node, fan-out, publisher; TTL: 5 * ttl_s)
    ingeststats.<server_id>    an ingest server's last statistics (TTL: 5 * ttl_s)

:class:`LivePlane` is one process's view of it. It opens (or creates) the bucket once NATS is
reachable, heartbeats this node's key, and watches the key families the process cares about,
keeping each as a map in memory, so a change is an event, not something found by polling:

- a node key that expires leaves a delete marker (the bucket is made with ``limit_marker_ttl``);
  the watcher turns it into ``on_node_gone(service, node)``, which workers use to take the dead
  node's jobs over (:mod:`reelhouse.common.jobs.lease`);
- after a reconnect every watcher is made anew (a watcher of a restarted server goes silent for
  ~16 s otherwise), and :attr:`settled` stays False for one TTL plus one heartbeat: a node seen
  missing then may only not have heartbeaten yet, so nobody claims on it before that.

Known traps of nats-py 2.16 with nats-server 2.15, handled here: ``msg_ttl`` is whole seconds
(heartbeats publish on the key's subject with it, as only ``create`` takes it); a marker reads as
an entry whose value is empty, not as a missing key, so a claim on it takes the key over with
``update(last=<marker revision>)``; the heartbeat survives publish timeouts during an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from reelhouse.common import __version__
from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.logging import get_logger

__all__ = ["LivePlane", "NodeEntry", "OwnerEntry", "decode"]

log = get_logger("reelhouse.live")

NodeGone = Callable[[str, str], Awaitable[None]]
"""Called with (service, node) when a node's heartbeat key expires or is deleted."""


def decode(value: bytes | None) -> dict[str, Any] | None:
    """A key's JSON value, or None for an empty one (deleted, purged, an expiry marker)."""
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, default=str, separators=(",", ":")).encode()


@dataclass
class NodeEntry:
    """One node as the watcher last saw it."""

    node: str
    service: str
    value: dict[str, Any]
    alive: bool
    last_seen: float  # wall-clock seconds of the last heartbeat seen (or of its expiry)
    gone_at: float | None = None  # wall-clock seconds the key expired or was deleted


@dataclass
class OwnerEntry:
    """One owner key: who runs a job, at which revision."""

    kind: str
    job_id: str
    node: str
    revision: int
    value: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Watch:
    pattern: str
    task: asyncio.Task[None] | None = None
    watcher: Any = None


class LivePlane:
    """One process's handle on the live-plane bucket: heartbeat, watches, owner operations."""

    def __init__(
        self,
        bus: Bus,
        *,
        service: str,
        node_id: str,
        heartbeat_s: float,
        ttl_s: int,
        watch: tuple[str, ...] = (),
        heartbeat: bool = True,
    ) -> None:
        self.bus = bus
        self.subjects = bus.subjects
        self.service = service
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s  # seconds between heartbeats
        self.ttl_s = max(1, int(ttl_s))  # a node key lives this long without a heartbeat
        self._heartbeat = heartbeat
        self.kv: KeyValue | None = None
        # Nodes by (service, node id): a node id is unique within its service (an operator may
        # give every service of a host the same one).
        self.nodes: dict[tuple[str, str], NodeEntry] = {}
        self._key_nodes: dict[tuple[str, str], str] = {}  # (service, key token) -> node id
        self.owners: dict[tuple[str, str], OwnerEntry] = {}
        self.progress: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        # Ingest servers' last statistics by server id (``ingeststats.<id>``), when watched.
        self.ingest_stats: dict[str, tuple[int, dict[str, Any]]] = {}
        # Uploaders' recent throughput by (storage id, node key token) (``uploadrate.<s>.<n>``,
        # issue 24), when watched: (time.time() it was seen, value).
        self.upload_rates: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.on_node_gone: list[NodeGone] = []
        self.on_owner: list[Callable[[tuple[str, str], OwnerEntry | None], None]] = []
        self.on_resync: list[Callable[[], Awaitable[None]]] = []
        self.beat_fields: Callable[[], dict[str, Any]] = dict
        self.ready = asyncio.Event()  # the bucket is open and every watcher has its first view
        self._watches = [_Watch(p) for p in (watch or (self.subjects.live_nodes(),))]
        self._connected_at: float | None = None  # loop time of the last (re)connection seen
        self._seen_reconnects = -1
        self.beats_failed = 0

    # -- keys ---------------------------------------------------------------------------------

    def node_key(self, service: str | None = None, node: str | None = None) -> str:
        return self.subjects.live_node(service or self.service, node or self.node_id)

    def owner_key(self, kind: str, job_id: str) -> str:
        return self.subjects.live_owner(kind, job_id)

    def progress_key(self, kind: str, job_id: str) -> str:
        return self.subjects.live_progress(kind, job_id)

    # -- state --------------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Connected for at least one TTL plus one heartbeat: a node missing from the map now
        really stopped heartbeating (docs/ARCHITECTURE.md §2, after any reconnect)."""
        if self._connected_at is None or not self.bus.connected or not self.ready.is_set():
            return False
        loop = asyncio.get_running_loop()
        return loop.time() - self._connected_at >= self.ttl_s + self.heartbeat_s

    def settles_in(self) -> float:
        """Seconds until :attr:`settled` (0 if it is; the TTL plus a heartbeat if not connected)."""
        if self._connected_at is None or not self.bus.connected:
            return self.ttl_s + self.heartbeat_s
        loop = asyncio.get_running_loop()
        return max(0.0, self._connected_at + self.ttl_s + self.heartbeat_s - loop.time())

    def alive(self, node: str, service: str | None = None) -> bool:
        """Whether ``node`` (of ``service``, or of any service) heartbeats, as last seen."""
        if service is not None:
            entry = self.nodes.get((service, node))
            return entry is not None and entry.alive
        return any(e.alive for (_, n), e in self.nodes.items() if n == node)

    def owned_by(self, kind: str, node: str | None = None) -> dict[str, OwnerEntry]:
        """Owner entries of one kind (of one node)."""
        return {
            job_id: entry
            for (k, job_id), entry in self.owners.items()
            if k == kind and (node is None or entry.node == node)
        }

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Open the bucket, heartbeat and watch until ``stop``; survive any outage."""
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while not stop.is_set():
            try:
                if await self._resync_if_needed():
                    next_beat = 0.0
                if self._heartbeat and self.kv is not None and loop.time() >= next_beat:
                    next_beat = loop.time() + self.heartbeat_s
                    await self.beat()
            except Exception as exc:
                log.debug("live_plane_step_failed", error=str(exc) or type(exc).__name__)
            wait = self.heartbeat_s if self._heartbeat else min(1.0, self.heartbeat_s * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, min(wait, next_beat - loop.time())))
        await self._stop_watches()
        if self._heartbeat and self.kv is not None:
            with contextlib.suppress(Exception):  # a clean stop: peers need not wait for the TTL
                await asyncio.wait_for(self.kv.delete(self.node_key()), 2.0)

    async def _resync_if_needed(self) -> bool:
        """(Re)open the bucket and the watchers after the first connection and each reconnect."""
        bus = self.bus
        if not bus.connected:
            self._connected_at = None
            return False
        if self._seen_reconnects == bus.reconnects and self.kv is not None:
            return False
        self._seen_reconnects = bus.reconnects
        self._connected_at = asyncio.get_running_loop().time()
        self.ready.clear()
        self.kv = await self.open_bucket()
        await self._stop_watches()
        for w in self._watches:
            await self._start_watch(w)
        self.ready.set()
        log.info("live_plane_synced", nodes=len(self.nodes), owners=len(self.owners))
        for cb in self.on_resync:
            await cb()
        return True

    async def open_bucket(self) -> KeyValue:
        """The bucket, created on first use (file storage: owner keys survive a server restart)."""
        js = self.bus.nc.jetstream(timeout=5.0)
        name = self.subjects.live_bucket()
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=name,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=float(self.ttl_s),
            description="Reelhouse live plane: nodes, owners, progress",
        )
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            return await js.key_value(name)  # made by a peer meanwhile

    async def beat(self) -> None:
        """Publish this node's heartbeat with the per-key TTL (no ack awaited past 1 s)."""
        assert self.kv is not None
        value = {
            "service": self.service,
            "node": self.node_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "at": time.time(),
            **self.beat_fields(),
        }
        js = self.bus.nc.jetstream(timeout=1.0)
        try:
            await js.publish(
                self.subjects.live_key_subject(self.node_key()),
                _encode(value),
                timeout=1.0,
                msg_ttl=self.ttl_s,
            )
        except Exception as exc:
            self.beats_failed += 1
            if self.beats_failed in (1, 10) or self.beats_failed % 100 == 0:
                log.warning("live_heartbeat_failed", failures=self.beats_failed, error=str(exc))
            return
        if self.beats_failed:
            log.info("live_heartbeat_recovered", after=self.beats_failed)
            self.beats_failed = 0

    async def _start_watch(self, w: _Watch) -> None:
        assert self.kv is not None
        watcher = await self.kv.watch(w.pattern)
        w.watcher = watcher
        first = asyncio.get_running_loop().create_future()

        async def consume() -> None:
            async for entry in watcher:
                if entry is None:
                    if not first.done():
                        first.set_result(None)
                    continue
                try:
                    await self._apply(entry)
                except Exception:
                    log.exception("live_watch_apply_failed", key=entry.key)
            if not first.done():
                first.set_result(None)

        w.task = asyncio.create_task(consume(), name=f"live-watch-{w.pattern}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), 5.0)

    async def _stop_watches(self) -> None:
        for w in self._watches:
            if w.watcher is not None:
                with contextlib.suppress(Exception):
                    await w.watcher.stop()
            if w.task is not None:
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w.task
            w.watcher = w.task = None

    async def _apply(self, entry: Any) -> None:
        parts = entry.key.split(".")
        family = parts[0]
        deleted = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
        value = None if deleted else decode(entry.value)
        if family == "nodes" and len(parts) == 3:
            await self._apply_node(parts[1], parts[2], value, entry)
        elif family == "owners" and len(parts) == 3:
            key = (parts[1], parts[2])
            if value is None:
                self.owners.pop(key, None)
                owner = None
            else:
                owner = OwnerEntry(kind=key[0], job_id=key[1], node=str(value.get("node", "")),
                                   revision=entry.revision, value=value)  # fmt: skip
                self.owners[key] = owner
            for cb in self.on_owner:
                cb(key, owner)
        elif family == "ingeststats" and len(parts) == 2:
            if value is None:
                self.ingest_stats.pop(parts[1], None)
            else:
                self.ingest_stats[parts[1]] = (entry.revision, value)
        elif family == "uploadrate" and len(parts) == 3:
            if value is None:
                self.upload_rates.pop((parts[1], parts[2]), None)
            else:
                self.upload_rates[(parts[1], parts[2])] = (time.time(), value)
        elif family == "progress" and len(parts) == 3:
            key = (parts[1], parts[2])
            if value is None:
                self.progress.pop(key, None)
            else:
                self.progress[key] = (entry.revision, value)

    async def _apply_node(
        self, service: str, key_node: str, value: dict[str, Any] | None, entry: Any
    ) -> None:
        now = time.time()
        if value is not None:
            node = str(value.get("node") or key_node)
            self._key_nodes[(service, key_node)] = node
            seen = float(value.get("at", now))
            self.nodes[(service, node)] = NodeEntry(node=node, service=service, value=value,
                                                    alive=True, last_seen=seen)  # fmt: skip
            return
        node = self._key_nodes.get((service, key_node), key_node)
        known = self.nodes.get((service, node))
        if known is None:
            return  # expired before we ever saw it alive: nothing to take over from the map
        was_alive = known.alive
        known.alive = False
        known.gone_at = now
        if was_alive and (service, node) != (self.service, self.node_id):
            for cb in self.on_node_gone:
                await cb(service, node)

    async def node_alive_now(self, node: str, service: str) -> bool:
        """Re-read a node's key (before taking its jobs): True if it heartbeats."""
        if self.kv is None:
            return False
        try:
            got = await self.kv.get(self.node_key(service, node))
        except nats.js.errors.KeyNotFoundError:
            return False
        value = decode(got.value)
        if value is None:
            return False
        return time.time() - float(value.get("at", 0)) < self.ttl_s

    # -- owners -------------------------------------------------------------------------------

    def _owner_value(self, **fields: Any) -> bytes:
        return _encode({"node": self.node_id, "service": self.service,
                        "since": utcnow().isoformat(), **fields})  # fmt: skip

    async def claim(self, kind: str, job_id: str, **fields: Any) -> int | None:
        """Create the job's owner key (atomic: one winner); its revision, or None if owned."""
        kv = self._kv()
        key = self.owner_key(kind, job_id)
        data = self._owner_value(**fields)
        try:
            return await kv.create(key, data)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        # A key that reads empty (deleted, purged, an expiry marker) is free: take it by revision.
        try:
            current = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if decode(current.value) is not None:
            return None
        return await self.take_over(kind, job_id, current.revision, **fields)

    async def take_over(self, kind: str, job_id: str, last: int, **fields: Any) -> int | None:
        """Compare-and-set the owner key from revision ``last``: exactly one node wins."""
        kv = self._kv()
        try:
            revision = await kv.update(self.owner_key(kind, job_id), self._owner_value(**fields),
                                       last=last)  # fmt: skip
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        self.owners[(kind, job_id)] = OwnerEntry(kind=kind, job_id=job_id, node=self.node_id,
                                                 revision=revision)  # fmt: skip
        return revision

    async def release(self, kind: str, job_id: str, revision: int) -> bool:
        """Delete the owner key if it is still at ``revision`` (ours). False without NATS: the
        key stays, and whoever sees this node gone (or the node itself, back) settles it."""
        if not self.bus.connected:
            return False
        kv = self._kv()
        try:
            await kv.delete(self.owner_key(kind, job_id), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            return False
        current = self.owners.get((kind, job_id))
        if current is not None and current.revision == revision:
            self.owners.pop((kind, job_id), None)
        return True

    async def owner(self, kind: str, job_id: str) -> OwnerEntry | None:
        """Read the owner key now (not from the map)."""
        kv = self._kv()
        try:
            got = await kv.get(self.owner_key(kind, job_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        value = decode(got.value)
        if value is None:
            return None
        return OwnerEntry(kind=kind, job_id=job_id, node=str(value.get("node", "")),
                          revision=got.revision, value=value)  # fmt: skip

    # -- counters -----------------------------------------------------------------------------

    async def count(self, key: str, ttl_s: int) -> int:
        """Add one to the counter ``key`` (created at 1) and return its new value; the key lives
        ``ttl_s`` seconds past its last write. Compare-and-set, retried on a concurrent write,
        so every API replica counts in the same key (the rate limits)."""
        kv = self._kv()
        js = self.bus.nc.jetstream(timeout=2.0)
        subject = self.subjects.live_key_subject(key)
        for _ in range(50):
            try:
                current = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                current = None
            value = int(current.value or b"0") if current is not None else 0
            try:
                if current is None:
                    await kv.create(key, b"1", msg_ttl=ttl_s)
                else:
                    await js.publish(subject, str(value + 1).encode(), timeout=2.0,
                                     headers={"Nats-Expected-Last-Subject-Sequence":
                                              str(current.revision)},
                                     msg_ttl=ttl_s)  # fmt: skip
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except nats.js.errors.APIError as exc:
                if exc.err_code in (10071, 10164):  # another replica counted first
                    continue
                raise
            return value + 1
        raise RuntimeError(f"counter {key} kept changing under 50 tries")

    # -- progress -----------------------------------------------------------------------------

    async def put_progress(
        self, kind: str, job_id: str, payload: bytes, *, ttl_s: int | None = None
    ) -> None:
        """A running job's last stats: a plain publish on the key's subject (JetStream stores it,
        nobody waits for an ack), expiring by itself if the job's node dies (after ``ttl_s``
        seconds, default five node TTLs; a writer that puts less often than that says so)."""
        if self.kv is None or not self.bus.connected:
            return
        subject = self.subjects.live_key_subject(self.progress_key(kind, job_id))
        ttl = max(1, int(ttl_s)) if ttl_s else 5 * self.ttl_s
        await self.bus.nc.publish(subject, payload, headers={"Nats-TTL": str(ttl)})

    def owner_progress(self, kind: str, job_id: str) -> tuple[int, dict[str, Any]] | None:
        """A job's last progress (revision, value) from the map, unless an owner key names
        another node than the one that wrote it (a dead owner's last word, until the new owner
        reports)."""
        found = self.progress.get((kind, job_id))
        owner = self.owners.get((kind, job_id))
        if found is None or (owner is not None and found[1].get("node") != owner.node):
            return None
        return found

    async def read_progress(self, kind: str, job_id: str) -> dict[str, Any] | None:
        """A job's progress value now (from the server, not a map); None if none or no NATS."""
        if self.kv is None or not self.bus.connected:
            return None
        try:
            got = await self.kv.get(self.progress_key(kind, job_id))
        except (nats.js.errors.KeyNotFoundError, nats.errors.TimeoutError):
            return None
        return decode(got.value)

    async def clear_progress(self, kind: str, job_id: str) -> None:
        if self.kv is None or not self.bus.connected:
            return
        with contextlib.suppress(Exception):
            await self.kv.purge(self.progress_key(kind, job_id))

    def _kv(self) -> KeyValue:
        if self.kv is None:
            from reelhouse.common.errors import Unavailable

            raise Unavailable("the live plane (NATS key-value) is not reachable yet")
        return self.kv
