"""What one API replica remembers about credentials, and how every replica forgets it at once.

Checking a user's token version and looking up an API key on every request would cost a
database read per request. :class:`CredentialCache` keeps each answer for
``REELHOUSE_AUTH_CACHE_TTL_S`` seconds, and forgets it the moment any replica says it changed:

- the replica that bumps a token version or removes a key calls :meth:`CredentialCache.changed`,
  which drops its own entries before the request answers and publishes
  :class:`~reelhouse.common.contracts.messages.CredentialsChanged` on ``<p>.auth.changed``;
- every replica (itself included) drops the user's entry and every cached API-key lookup when
  that message arrives (a key's role depends on its creator's, so a user change may change any
  key).

Three rules keep a stale answer from outliving the change:

- an answer read from the database while an invalidation arrived is returned but not kept
  (the read may have seen the old document);
- nothing is served from the cache unless the subscription is up and the connection has not
  been lost since the entry was stored (a change published while this replica was cut off
  from NATS would otherwise be missed); while NATS is down every lookup reads the database;
- the TTL bounds everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.messages import CredentialsChanged
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.credentials")

T = TypeVar("T")
Space = Literal["user", "key"]


@dataclass(frozen=True)
class _Entry:
    value: Any
    stored: float
    link: int
    """The bus's reconnect count when stored: an entry from before a reconnect is not served."""


class CredentialCache:
    """Per-replica cache of user facts (by user id) and API-key principals (by key hash)."""

    def __init__(self, *, bus: Bus, ttl_s: float, node: str, max_entries: int = 10_000) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self.node = node
        self.max_entries = max_entries
        self._spaces: dict[Space, OrderedDict[str, _Entry]] = {
            "user": OrderedDict(),
            "key": OrderedDict(),
        }
        self._epoch = 0
        self._subscribed = False
        self._changed = asyncio.Event()
        self.hits = 0
        self.misses = 0

    @property
    def live(self) -> bool:
        """True while invalidations can reach this replica (subscribed, connected)."""
        return self._subscribed and self.bus.connected

    async def get(self, space: Space, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """The cached answer for ``key``, else ``await load()`` (kept unless something changed
        while it loaded)."""
        entries = self._spaces[space]
        entry = entries.get(key)
        now = time.monotonic()
        if (
            entry is not None
            and self.live
            and entry.link == self.bus.reconnects
            and now - entry.stored < self.ttl_s
        ):
            self.hits += 1
            entries.move_to_end(key)
            return entry.value
        self.misses += 1
        epoch, link = self._epoch, self.bus.reconnects
        value = await load()
        if self.ttl_s > 0 and self.live and epoch == self._epoch and link == self.bus.reconnects:
            entries[key] = _Entry(value, time.monotonic(), link)
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
        return value

    def drop(self, *, user_id: str | None = None) -> None:
        """Forget ``user_id``'s facts and every API-key lookup; wake :meth:`wait_changed`."""
        self._epoch += 1
        if user_id is not None:
            self._spaces["user"].pop(user_id, None)
        self._spaces["key"].clear()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self) -> None:
        """Return at the next invalidation (long-lived connections re-check their credential)."""
        await self._changed.wait()

    async def changed(
        self, *, reason: str, user_id: str | None = None, key_id: str | None = None
    ) -> None:
        """Credentials changed here: forget them now and tell every replica."""
        self.drop(user_id=user_id)
        message = CredentialsChanged(user_id=user_id, key_id=key_id, reason=reason, node=self.node)
        try:
            await self.bus.publish(self.bus.subjects.auth_changed(), message)
            await self.bus.nc.flush(timeout=1)
        except Exception as exc:  # the TTL still bounds how long other replicas believe it
            log.warning("credentials_changed_not_published", reason=reason, error=str(exc)[:200])

    async def _on_message(self, msg: Any) -> None:
        try:
            change = CredentialsChanged.model_validate_json(msg.data)
        except ValueError:
            self.drop()  # unreadable: forgetting everything is always safe
            return
        self.drop(user_id=change.user_id)
        if change.node != self.node:
            log.debug("credentials_changed", user_id=change.user_id, key_id=change.key_id,
                      reason=change.reason, by=change.node)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Lifespan task: subscribe to ``<p>.auth.changed`` once NATS answers (nats-py
        re-subscribes by itself after a reconnect)."""
        while not stop.is_set() and not self._subscribed:
            if await self.bus.wait_connected(timeout=1.0):
                try:
                    subject = self.bus.subjects.auth_changed()
                    await self.bus.nc.subscribe(subject, cb=self._on_message)
                    await self.bus.nc.flush(timeout=2)
                    self._subscribed = True
                    log.debug("credentials_cache_subscribed", ttl_s=self.ttl_s)
                except Exception as exc:
                    log.warning("credentials_cache_unsubscribed", error=str(exc)[:200])
            if not self._subscribed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
