"""``GET /api/events`` (WebSocket): the caller's tenant's events, live, resumable; stats on request.

Protocol (JSON text frames; docs/DECISIONS.md "Events, webhooks, operator endpoints"):

- auth: the token in ``?token=`` (browsers cannot set headers on a WebSocket), ``x-access-token``
  or ``Authorization: Bearer``; a bad one gets ``{"type":"error","code":"UNAUTHORIZED"}`` and
  close code 4401.
- server → ``connected`` (``last_id``: the newest event id now; ``summary``: the tenant's jobs by
  state, streams, live nodes), then ``event`` (``id``: the stream sequence, ``event``: the
  payload) and, when asked, ``stats`` (a JobStats message).
- client → ``subscribe`` / ``unsubscribe`` with ``modules``, ``job_ids``, ``events``,
  ``channel_ids`` (lists; a channel's events and its recording job's),
  ``stats: true``; the server answers ``subscribed`` with the filter in force.
- the filter may also be given on connect: ``?job_ids=a,b&modules=recording&events=...&stats=1``.
- resume: connect with ``?last_id=N`` or send ``{"type":"resume","last_id":N}``: events after N
  are replayed from the stream, then live ones follow without a gap (``gap: true`` in the answer
  if some of them already aged out).
- a client too slow to keep up with its events is closed with 4429 ("reconnect with last_id").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from bson import ObjectId
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from reelhouse.api.accounts.principal import verify_credential
from reelhouse.api.events.service import EventFilter, decode, subject_parts, visible_to
from reelhouse.api.state import AppState, OpsState
from reelhouse.common.contracts.ingest import IngestStats
from reelhouse.common.contracts.messages import JobStats
from reelhouse.common.errors import ReelhouseError, Unauthorized
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.api.events")

router = APIRouter(tags=["events"])

QUEUE_SIZE = 2000  # frames waiting for one client before it counts as too slow


def _token(ws: WebSocket) -> str | None:
    auth = ws.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return ws.query_params.get("token") or ws.headers.get("x-access-token") or bearer


async def summary(state: AppState, tenant: str) -> dict[str, Any]:
    """The tenant's jobs by state, its streams, and the live service nodes."""
    out: dict[str, Any] = {}
    for module, coll in (
        ("recording", Collections.RECORDINGS),
        ("restream", Collections.RESTREAMS),
    ):
        by_state: dict[str, int] = {}
        cursor = state.db[coll].find({"tenant": tenant}, {"active": 1, "runtime.state": 1})
        async for doc in cursor.limit(100_000):
            runtime = doc.get("runtime") or {}
            name = runtime.get("state") or ("pending" if doc.get("active") else "stopped")
            by_state[name] = by_state.get(name, 0) + 1
        out[module] = {"total": sum(by_state.values()), "by_state": by_state}
    out["stream"] = {
        "total": await state.db[Collections.STREAMS].count_documents({"tenant": tenant})
    }
    out["nodes_running"] = sum(1 for entry in list(state.live.nodes.values()) if entry.alive)
    return out


class Session:
    """One connected client: its filter, its JetStream consumer, its outgoing queue."""

    def __init__(self, ws: WebSocket, state: AppState, tenant: str) -> None:
        self.ws, self.state, self.tenant = ws, state, tenant
        self.bus = state.bus
        self.prefix = state.bus.subjects.prefix
        self.filter = EventFilter()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.overflow = asyncio.Event()
        self.events_sub: Any = None
        self.stats_sub: Any = None

    # -- JetStream: replay and live in one ordered consumer --------------------------------

    async def follow(self, last_id: int | None) -> dict[str, Any]:
        """(Re)start the event consumer after ``last_id`` (None: after the newest event)."""
        await self._drop(self.events_sub)
        self.events_sub = None
        js = self.bus.nc.jetstream()
        stream = self.bus.subjects.events_stream_name()
        info = await js.stream_info(stream)
        newest, oldest = int(info.state.last_seq), int(info.state.first_seq)
        start = newest + 1 if last_id is None else max(last_id + 1, 1)
        gap = last_id is not None and start < oldest and newest >= oldest
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        self.events_sub = await js.subscribe(
            self.bus.subjects.all_events(),
            stream=stream,
            cb=self._on_event,
            ordered_consumer=True,
            config=config,
            inactive_threshold=60.0,
        )
        return {"last_id": newest, "from_id": start, "gap": gap}

    async def _on_event(self, msg: Any) -> None:
        payload = decode(msg.data)
        if payload is None or not visible_to(payload, self.tenant):
            return
        module, job_id, event = subject_parts(self.prefix, msg.subject)
        channel_id = payload.get("channel_id")
        if not self.filter.matches(module, job_id, event, channel_id):
            return
        frame = {"type": "event", "id": msg.metadata.sequence.stream, "event": payload}
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflow.set()

    # -- stats (core NATS, fan-out) -------------------------------------------------------

    async def sync_stats(self) -> None:
        if self.filter.stats and self.stats_sub is None:
            self.stats_sub = await self.bus.nc.subscribe(
                self.bus.subjects.all_stats(), cb=self._on_stats
            )
        elif not self.filter.stats and self.stats_sub is not None:
            await self._drop(self.stats_sub)
            self.stats_sub = None

    async def _on_stats(self, msg: Any) -> None:
        try:
            stats: JobStats | IngestStats = JobStats.model_validate_json(msg.data)
        except ValidationError:
            try:  # an ingest server's transport statistics (issue 21)
                stats = IngestStats.model_validate_json(msg.data)
            except ValidationError:
                return
        if stats.tenant != self.tenant or not self.filter.matches(stats.module, stats.job_id):
            return
        with contextlib.suppress(asyncio.QueueFull):  # stats are droppable; the next one comes
            self.queue.put_nowait({"type": "stats", "stats": stats.model_dump(mode="json")})

    # -- the client's messages ---------------------------------------------------------------

    async def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.error("VALIDATION_ERROR", "a message is a JSON object with a `type`")
            return
        kind = message["type"]
        try:
            if kind == "subscribe":
                self.filter.subscribe(message)
                await self.channel_jobs()
            elif kind == "unsubscribe":
                self.filter.unsubscribe(message)
                await self.channel_jobs()
            elif kind == "resume":
                last_id = message.get("last_id")
                if not isinstance(last_id, int) or last_id < 0:
                    raise ValueError("last_id: must be a whole number >= 0")
                await self.queue.put({"type": "resumed", **await self.follow(last_id)})
                return
            elif kind == "ping":
                await self.queue.put({"type": "pong"})
                return
            else:
                raise ValueError(f"type: unknown message type {kind!r}")
        except ValueError as exc:
            await self.error("VALIDATION_ERROR", str(exc))
            return
        await self.sync_stats()
        await self.queue.put({"type": "subscribed", "filter": self.filter.describe()})

    async def channel_jobs(self) -> None:
        """The recording jobs of the channels in the filter (their events carry the job id)."""
        jobs: set[str] = set()
        for channel_id in self.filter.channel_ids or ():
            if ObjectId.is_valid(channel_id):
                doc = await self.state.db[Collections.CHANNELS].find_one(
                    {"_id": ObjectId(channel_id), "tenant": self.tenant}, {"job_id": 1}
                )
                if doc is not None:
                    jobs.add(str(doc["job_id"]))
        self.filter.channel_jobs = jobs

    async def error(self, code: str, message: str) -> None:
        await self.queue.put({"type": "error", "code": code, "message": message})

    # -- plumbing ---------------------------------------------------------------------------

    async def send_loop(self) -> None:
        while True:
            frame = await self.queue.get()
            await self.ws.send_text(json.dumps(frame, separators=(",", ":")))

    async def receive_loop(self) -> None:
        while True:
            text = await self.ws.receive_text()
            try:
                message = json.loads(text)
            except ValueError:
                await self.error("VALIDATION_ERROR", "a message must be JSON")
                continue
            await self.handle(message)

    async def close(self) -> None:
        for sub in (self.events_sub, self.stats_sub):
            await self._drop(sub)

    @staticmethod
    async def _drop(sub: Any) -> None:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _until_revoked(ws: WebSocket, state: AppState, token: str) -> None:
    """Return (after closing with 4401) once the connection's credential is refused: a logout,
    a password or role change, a removed user or key ends the stream too."""
    while True:
        await state.credentials.wait_changed()
        try:
            await verify_credential(ws, token)
        except ReelhouseError as exc:
            frame = {"type": "error", "code": "UNAUTHORIZED", "message": exc.message}
            with contextlib.suppress(Exception):
                await ws.send_json(frame)
                await ws.close(code=4401, reason="unauthorized")
            return
        except Exception as exc:  # the database is away: keep the stream, look again next time
            log.debug("events_ws_recheck_failed", error=str(exc)[:200])


@router.websocket("/api/events")
async def events(ws: WebSocket) -> None:
    """The caller's tenant's events (and stats on request) as JSON frames; see module docs."""
    await ws.accept()
    state: AppState = ws.app.state.reelhouse
    ops: OpsState = ws.app.state.ops
    try:
        token = _token(ws)
        if not token:
            raise Unauthorized("missing token (?token= or x-access-token)")
        principal = await verify_credential(ws, token)
    except ReelhouseError as exc:
        body = {"type": "error", "code": "UNAUTHORIZED", "message": exc.message}
        with contextlib.suppress(Exception):
            await ws.send_json(body)
            await ws.close(code=4401, reason="unauthorized")
        return
    tenant = getattr(principal, "tenant", "default")
    raw_last = ws.query_params.get("last_id")
    last_id = int(raw_last) if raw_last and raw_last.isdigit() else None
    try:
        await asyncio.wait_for(ops.events_ready.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await ws.send_json(
                {"type": "error", "code": "UNAVAILABLE", "message": "events are unavailable"}
            )
            await ws.close(code=1013, reason="events unavailable")
        return
    session = Session(ws, state, tenant)
    # The filter may come with the connection, so a resumed replay is filtered from the start.
    initial: dict[str, Any] = {
        k: [v for v in ws.query_params[k].split(",") if v]
        for k in ("modules", "job_ids", "events", "channel_ids")
        if ws.query_params.get(k)
    }
    if ws.query_params.get("stats") in ("1", "true"):
        initial["stats"] = True
    try:
        if initial:
            session.filter.subscribe(initial)
            await session.channel_jobs()
    except ValueError as exc:
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "error", "code": "VALIDATION_ERROR", "message": str(exc)})
            await ws.close(code=1008, reason="bad filter")
        return
    ops.metrics.ws_clients.inc()
    tasks: list[asyncio.Task[Any]] = []
    try:
        position = await session.follow(last_id)
        await session.sync_stats()
        hello = {
            "type": "connected",
            "tenant": tenant,
            "role": getattr(principal, "role", None),
            "node": state.node.node_id,
            **position,
            "filter": session.filter.describe(),
            "summary": await summary(state, tenant),
        }
        await ws.send_text(json.dumps(hello, separators=(",", ":"), default=str))
        tasks = [
            asyncio.create_task(session.send_loop(), name="ws-send"),
            asyncio.create_task(session.receive_loop(), name="ws-receive"),
            asyncio.create_task(session.overflow.wait(), name="ws-overflow"),
            asyncio.create_task(_until_revoked(ws, state, token), name="ws-revoked"),
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if session.overflow.is_set():
            with contextlib.suppress(Exception):
                await ws.close(code=4429, reason="too slow: reconnect with last_id")
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                log.warning("events_ws_failed", error=str(exc)[:200])
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        ops.metrics.ws_clients.dec()
