"""Users, API keys and refresh tokens in MongoDB; every document carries its ``tenant``.

- ``users``: ``{tenant, username, password_hash (argon2id), role, created, modified}``;
  usernames are unique across tenants (login names only a username).
- ``api_keys``: ``{tenant, name, role, key_hash, prefix, created, created_by, last_used}``.
  A key is 32 random bytes, so its SHA-256 is enough to store and fast to look up on every
  request (argon2 is for guessable secrets: passwords). ``remove`` deletes the document: the
  key stops working at once.
- ``refresh_tokens``: ``{tenant, user_id, token_hash, expires_at}`` (SHA-256 as for keys);
  logout deletes it, a refresh rotates it; a TTL index purges expired ones.
- ``rate_limits`` and ``idempotency`` belong to :mod:`ratelimit` and :mod:`idempotency`; their
  indexes are made here with the others.

Documents that expire carry ``expires_at``. MongoDB removes them through a TTL index; FerretDB
has none (``expireAfterSeconds`` is "not implemented"), so the API also purges them every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.accounts")


class Collections:
    USERS = "users"
    API_KEYS = "api_keys"
    REFRESH_TOKENS = "refresh_tokens"
    RATE_LIMITS = "rate_limits"
    IDEMPOTENCY = "idempotency"


EXPIRING = (Collections.REFRESH_TOKENS, Collections.RATE_LIMITS, Collections.IDEMPOTENCY)
"""Collections whose documents carry ``expires_at``."""

KEY_PREFIX = "rhk_"
"""Every API key starts with this (tells a key from a JWT; makes leaked keys greppable)."""
REFRESH_PREFIX = "rhr_"

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def ensure_indexes(db: AsyncDatabase) -> None:
    """Indexes of the security collections (idempotent)."""
    await db[Collections.USERS].create_index([("username", ASCENDING)], unique=True)
    await db[Collections.USERS].create_index([("tenant", ASCENDING)])
    await db[Collections.API_KEYS].create_index([("key_hash", ASCENDING)], unique=True)
    await db[Collections.API_KEYS].create_index([("tenant", ASCENDING)])
    await db[Collections.REFRESH_TOKENS].create_index([("token_hash", ASCENDING)], unique=True)
    for name in EXPIRING:
        try:
            await db[name].create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        except OperationFailure:  # FerretDB has no TTL indexes: purge_expired does it
            await db[name].create_index([("expires_at", ASCENDING)])


async def purge_expired(db: AsyncDatabase) -> int:
    """Delete expired refresh tokens, rate-limit windows and idempotency records."""
    now = utcnow()
    removed = 0
    for name in EXPIRING:
        removed += (await db[name].delete_many({"expires_at": {"$lte": now}})).deleted_count
    return removed


async def purge_expired_forever(db: AsyncDatabase, stop: asyncio.Event, every_s: float) -> None:
    """:func:`purge_expired` every ``every_s`` until ``stop`` (TTL indexes do it on MongoDB)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        try:
            await purge_expired(db)
        except PyMongoError as exc:
            log.warning("purge_expired_failed", error=str(exc).splitlines()[0][:200])


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; always spends one argon2 verification (no timing oracle)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


async def find_key(db: AsyncDatabase, key: str) -> dict[str, Any] | None:
    return await db[Collections.API_KEYS].find_one({"key_hash": sha256(key)})


async def store_refresh_token(
    db: AsyncDatabase, *, tenant: str, user_id: str, token: str, ttl_s: int
) -> datetime:
    expires = utcnow() + timedelta(seconds=ttl_s)
    await db[Collections.REFRESH_TOKENS].insert_one(
        {
            "tenant": tenant,
            "user_id": user_id,
            "token_hash": sha256(token),
            "created": utcnow(),
            "expires_at": expires,
        }
    )
    return expires


async def take_refresh_token(db: AsyncDatabase, token: str) -> dict[str, Any] | None:
    """Remove the refresh token and return it if it was valid (one use: refresh rotates it)."""
    doc = await db[Collections.REFRESH_TOKENS].find_one_and_delete({"token_hash": sha256(token)})
    if doc is None or doc["expires_at"] <= utcnow():
        return None
    return doc
