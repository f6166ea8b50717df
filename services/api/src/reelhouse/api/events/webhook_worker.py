"""Webhook delivery: events out to HTTP receivers, signed, retried, logged.

Two loops in every API replica (lifespan tasks):

- **intake**: one durable JetStream pull consumer (``webhooks``) on the events stream, shared by
  all replicas, so each event is taken by one of them. For each event it finds the active
  webhooks of the event's tenant whose filter matches (and that existed when the event
  happened) and inserts one delivery per webhook into ``webhook_deliveries`` with the id
  ``<webhook id>-<event id>``: a redelivered event (a replica died before its ack) inserts
  nothing new. Then it acks.
- **delivery**: claims due deliveries one at a time with an atomic ``find_one_and_update`` that
  also pushes ``next_attempt_at`` out (the claim), POSTs them with httpx, and records every
  attempt (status code, error, duration) in the delivery's ``attempts`` log. Failures are retried
  with exponential backoff (``webhook_retry_initial_s`` doubling up to ``webhook_retry_max_s``)
  until ``webhook_max_attempts``; then the delivery is ``failed``.

A delivery is a POST of ``{"id", "event_id", "webhook_id", "type", "event"}`` (the same body on
every attempt) with ``X-Reelhouse-Signature: sha256=<hex HMAC-SHA256 of the body with the
webhook's secret>``, ``X-Reelhouse-Delivery`` (the delivery id), ``X-Reelhouse-Event`` and
``X-Reelhouse-Attempt``. Any 2xx is success; redirects are not followed.

Receivers are held to the address policy (:mod:`reelhouse.common.netpolicy`): a URL whose
address is refused is refused at ``create`` and again at each attempt, and every POST goes
through the filtering proxy, which checks the address it connects to. A failed attempt records
the receiver's status (``HTTP 500``) or a class (``forbidden_address``, ``unreachable``,
``refused``, ``timeout``), never the receiver's own text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from bson import ObjectId
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from reelhouse.api.events.service import decode, subject_parts
from reelhouse.api.state import AppState, OpsState
from reelhouse.common import __version__
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.logging import get_logger
from reelhouse.common.netpolicy import AddressRefused, Unresolvable
from reelhouse.common.netproxy import PROXY_ERROR_HEADER, STATUS, FilteringProxy

log = get_logger("reelhouse.api.webhooks")

WEBHOOKS = "webhooks"
DELIVERIES = "webhook_deliveries"
CONSUMER = "webhooks"
SIGNATURE_HEADER = "X-Reelhouse-Signature"
DELIVERY_HEADER = "X-Reelhouse-Delivery"
CONCURRENCY = 16  # deliveries in flight per replica


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def matches(hook: dict[str, Any], module: str, event: str) -> bool:
    events, modules = hook.get("events") or [], hook.get("modules") or []
    return (not events or event in events) and (not modules or module in modules)


async def ensure_indexes(state: AppState) -> None:
    await state.db[WEBHOOKS].create_index([("tenant", ASCENDING), ("active", ASCENDING)])
    await state.db[DELIVERIES].create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    await state.db[DELIVERIES].create_index([("webhook_id", ASCENDING), ("created", DESCENDING)])


class WebhookWorker:
    """The intake and delivery loops of one API replica."""

    def __init__(self, state: AppState, ops: OpsState) -> None:
        self.state, self.ops, self.settings = state, ops, state.settings
        self.node = state.node.node_id
        self.policy = state.settings.net_policy()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(self.ops.events_ready.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        with contextlib.suppress(Exception):
            await ensure_indexes(self.state)
        intake = asyncio.create_task(self._intake(stop), name="webhook-intake")
        delivery = asyncio.create_task(self._deliver_loop(stop), name="webhook-delivery")
        await stop.wait()
        intake.cancel()  # do not wait for a pending fetch to time out
        await asyncio.gather(intake, delivery, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.settings.webhook_timeout_s + 1)

    # -- intake ---------------------------------------------------------------------------------

    async def _subscribe(self) -> Any:
        bus = self.state.bus
        config = ConsumerConfig(
            durable_name=CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=1000,
        )
        return await bus.nc.jetstream().pull_subscribe(
            bus.subjects.all_events(),
            durable=CONSUMER,
            stream=bus.subjects.events_stream_name(),
            config=config,
        )

    async def _intake(self, stop: asyncio.Event) -> None:
        sub = None
        try:
            while not stop.is_set():
                try:
                    if sub is None:
                        sub = await self._subscribe()
                    msgs = await sub.fetch(batch=50, timeout=1.0)
                except TimeoutError:
                    continue
                except Exception as exc:
                    log.warning("webhook_intake_failed", error=str(exc)[:200])
                    sub = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2.0)
                    continue
                await self._take(msgs)
        finally:
            if sub is not None:  # else the connection's drain waits for the pull inbox
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _take(self, msgs: list[Any]) -> None:
        for msg in msgs:
            try:
                created = await self._accept(msg)
                await msg.ack()
            except Exception as exc:
                log.warning("webhook_intake_failed", error=str(exc)[:200])
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
                continue
            if created:
                self.ops.webhook_wake.set()

    async def _accept(self, msg: Any) -> int:
        """Insert the deliveries of one event; returns how many were new."""
        payload = decode(msg.data)
        if payload is None:
            return 0
        module, _, event = subject_parts(self.state.bus.subjects.prefix, msg.subject)
        seq = int(msg.metadata.sequence.stream)
        happened = msg.metadata.timestamp
        if happened is not None and happened.tzinfo is None:
            happened = happened.replace(tzinfo=UTC)
        tenant = payload.get("tenant")
        query: dict[str, Any] = {"active": True}
        if tenant is not None:  # events of no job (disk, config) go to every tenant's hooks
            query["tenant"] = tenant
        created = 0
        now = utcnow()
        async for hook in self.state.db[WEBHOOKS].find(query):
            if not matches(hook, module, event):
                continue
            if happened is not None and hook["created"] > happened + timedelta(seconds=1):
                continue  # the webhook did not exist yet (the stream is replayed on first start)
            delivery = {
                "_id": f"{hook['_id']}-{seq}",
                "webhook_id": str(hook["_id"]),
                "tenant": hook["tenant"],
                "event_id": seq,
                "event_type": event,
                "module": module,
                "event": payload,
                "status": "pending",
                "attempts": [],
                "attempt_count": 0,
                "next_attempt_at": now,
                "created": now,
            }
            with contextlib.suppress(DuplicateKeyError):
                await self.state.db[DELIVERIES].insert_one(delivery)
                created += 1
        return created

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver_loop(self, stop: asyncio.Event) -> None:
        # Every POST goes through the filtering proxy: the address policy is applied to the
        # address actually connected to (a receiver's name re-resolved to a refused one too).
        async with (
            FilteringProxy(self.policy, connect_timeout_s=self.settings.webhook_timeout_s) as proxy,
            httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_s,
                follow_redirects=False,
                proxy=proxy.url,
                trust_env=False,
                headers={"User-Agent": f"Reelhouse-Webhooks/{__version__}"},
            ) as client,
        ):
            while not stop.is_set():
                self.ops.webhook_wake.clear()
                try:
                    claimed = await self._claim_some(client)
                except Exception as exc:
                    log.warning("webhook_claim_failed", error=str(exc).splitlines()[0][:200])
                    claimed = 0
                if claimed:
                    continue
                waiters = {
                    asyncio.ensure_future(self.ops.webhook_wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                _, pending = await asyncio.wait(
                    waiters,
                    timeout=self.settings.webhook_poll_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in pending:
                    waiter.cancel()

    async def _claim_some(self, client: httpx.AsyncClient) -> int:
        claimed = 0
        while not self._slots.locked():
            now = utcnow()
            due = {"status": "pending", "next_attempt_at": {"$lte": now}}
            # A plain read first: the poll finds nothing due almost always, and a claim is a
            # write (serialized on the local FerretDB, a lock on MongoDB).
            if await self.state.db[DELIVERIES].find_one(due, {"_id": 1}) is None:
                return claimed
            hold = timedelta(seconds=self.settings.webhook_timeout_s + 30)
            doc = await self.state.db[DELIVERIES].find_one_and_update(
                due,
                {"$set": {"next_attempt_at": now + hold, "claimed_by": self.node}},
                sort=[("next_attempt_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                return claimed
            claimed += 1
            await self._slots.acquire()
            task = asyncio.create_task(self._attempt(client, doc))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return claimed

    async def _attempt(self, client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        try:
            await self._attempt_unguarded(client, doc)
        except Exception as exc:
            log.warning("webhook_attempt_failed", delivery=doc["_id"], error=str(exc)[:200])
        finally:
            self._slots.release()

    async def _attempt_unguarded(self, client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        deliveries = self.state.db[DELIVERIES]
        hook = None
        with contextlib.suppress(Exception):
            hook = await self.state.db[WEBHOOKS].find_one({"_id": ObjectId(doc["webhook_id"])})
        if hook is None or not hook.get("active", True):
            await deliveries.update_one(
                {"_id": doc["_id"]}, {"$set": {"status": "cancelled", "next_attempt_at": None}}
            )
            return
        attempt = int(doc.get("attempt_count", 0)) + 1
        body = json.dumps(
            {
                "id": doc["_id"],
                "event_id": doc["event_id"],
                "webhook_id": doc["webhook_id"],
                "type": doc["event_type"],
                "event": doc["event"],
            },
            separators=(",", ":"),
            default=str,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(hook["secret"], body),
            DELIVERY_HEADER: doc["_id"],
            "X-Reelhouse-Event": doc["event_type"],
            "X-Reelhouse-Attempt": str(attempt),
        }
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            await self.policy.resolve(urlsplit(hook["url"]).hostname or "")
            response = await client.post(hook["url"], content=body, headers=headers)
            status_code = response.status_code
            if PROXY_ERROR_HEADER in response.headers:  # the proxy answered, not the receiver
                status_code, error = None, response.headers[PROXY_ERROR_HEADER]
            elif not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except (AddressRefused, Unresolvable) as exc:
            error = exc.error_class
            log.info("webhook_address_refused", url=hook["url"], detail=str(exc)[:300])
        except httpx.ProxyError as exc:  # a CONNECT (https) the proxy answered itself
            error = next((c for c, st in STATUS.items() if st in str(exc)), "unreachable")
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError:
            error = "refused"  # the receiver broke the exchange; its own words stay out
        record = {
            "attempt": attempt,
            "at": utcnow(),
            "status_code": status_code,
            "error": error,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "node": self.node,
        }
        update: dict[str, Any] = {"attempt_count": attempt, "last_status_code": status_code}
        if error is None:
            update |= {"status": "delivered", "delivered_at": record["at"], "next_attempt_at": None}
            outcome = "delivered"
        elif attempt >= self.settings.webhook_max_attempts:
            update |= {"status": "failed", "last_error": error, "next_attempt_at": None}
            outcome = "failed"
            log.warning(
                "webhook_delivery_failed", delivery=doc["_id"], url=hook["url"], error=error
            )
        else:
            delay = min(
                self.settings.webhook_retry_initial_s * 2 ** (attempt - 1),
                self.settings.webhook_retry_max_s,
            )
            update |= {
                "status": "pending",
                "last_error": error,
                "next_attempt_at": utcnow() + timedelta(seconds=delay),
            }
            outcome = "retry"
        await deliveries.update_one(
            {"_id": doc["_id"]}, {"$set": update, "$push": {"attempts": record}}
        )
        self.ops.metrics.webhook_deliveries.labels(outcome).inc()
        if outcome == "retry":
            self.ops.webhook_wake.set()  # the loop sleeps at most webhook_poll_s anyway


def describe_hook(doc: dict[str, Any]) -> dict[str, Any]:
    """A webhook as the API shows it (the secret masked)."""
    from reelhouse.common.contracts.base import format_timestamp

    return {
        "id": str(doc["_id"]),
        "url": doc["url"],
        "events": doc.get("events") or [],
        "modules": doc.get("modules") or [],
        "description": doc.get("description", ""),
        "active": doc.get("active", True),
        "secret": "****" + doc["secret"][-4:],
        "created": format_timestamp(doc["created"]),
    }


def describe_delivery(doc: dict[str, Any]) -> dict[str, Any]:
    from reelhouse.common.contracts.base import format_timestamp

    def ts(value: datetime | None) -> str | None:
        return format_timestamp(value) if value else None

    return {
        "id": doc["_id"],
        "webhook_id": doc["webhook_id"],
        "event_id": doc["event_id"],
        "event_type": doc["event_type"],
        "status": doc["status"],
        "attempt_count": doc.get("attempt_count", 0),
        "next_attempt_at": ts(doc.get("next_attempt_at")) if doc["status"] == "pending" else None,
        "delivered_at": ts(doc.get("delivered_at")),
        "last_error": doc.get("last_error"),
        "created": ts(doc.get("created")),
        "attempts": [{**a, "at": ts(a.get("at"))} for a in doc.get("attempts") or []],
    }
