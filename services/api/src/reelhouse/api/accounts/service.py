"""Users, API keys and refresh tokens in MongoDB; every document carries its ``tenant``.

- ``users``: ``{tenant, username, password_hash (argon2id), role, token_version, created,
  modified}``; usernames are unique across tenants (login names only a username).
  ``token_version`` (absent = 0) is in every access JWT (claim ``ver``); bumping it refuses
  every access token issued before (logout, password or role change, refresh-token reuse).
- ``api_keys``: ``{tenant, name, role, key_hash, prefix, created, created_by, created_by_kind}``.
  A key is 32 random bytes, so its SHA-256 is enough to store and fast to look up
  (argon2 is for guessable secrets: passwords). ``remove`` deletes the document.
  ``created_by`` is a user id, a key id or ``bootstrap`` (``created_by_kind`` says which).
- ``refresh_tokens``: ``{tenant, user_id, token_hash, family, expires_at, used_at}`` (SHA-256
  as for keys). One login starts a ``family`` (a chain); a refresh marks the token used and
  stores its successor in the same family. A used token presented again revokes the family.
  Logout deletes the family; a TTL index purges expired ones.
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from bson import ObjectId
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
    await db[Collections.REFRESH_TOKENS].create_index([("user_id", ASCENDING)])
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


@dataclass(frozen=True)
class UserFacts:
    """What authenticating a request needs to know of a user (cached per replica)."""

    id: str
    tenant: str
    role: str
    token_version: int


async def user_facts(db: AsyncDatabase, user_id: str) -> UserFacts | None:
    """The user's tenant, role and token version; None if there is no such user."""
    if not ObjectId.is_valid(user_id):
        return None
    doc = await db[Collections.USERS].find_one(
        {"_id": ObjectId(user_id)}, {"tenant": 1, "role": 1, "token_version": 1}
    )
    if doc is None:
        return None
    return UserFacts(
        id=user_id,
        tenant=doc["tenant"],
        role=doc["role"],
        token_version=int(doc.get("token_version", 0)),
    )


async def bump_token_version(db: AsyncDatabase, user_id: str) -> None:
    """Refuse every access token of the user issued so far (one atomic ``$inc``)."""
    if ObjectId.is_valid(user_id):
        await db[Collections.USERS].update_one(
            {"_id": ObjectId(user_id)}, {"$inc": {"token_version": 1}}
        )


async def find_key_by_hash(db: AsyncDatabase, key_hash: str) -> dict[str, Any] | None:
    return await db[Collections.API_KEYS].find_one({"key_hash": key_hash})


async def find_key_by_id(db: AsyncDatabase, key_id: str) -> dict[str, Any] | None:
    if not ObjectId.is_valid(key_id):
        return None
    return await db[Collections.API_KEYS].find_one({"_id": ObjectId(key_id)})


async def store_refresh_token(
    db: AsyncDatabase, *, tenant: str, user_id: str, token: str, family: str, ttl_s: int
) -> datetime:
    """Keep a new refresh token of chain ``family`` (one login)."""
    expires = utcnow() + timedelta(seconds=ttl_s)
    await db[Collections.REFRESH_TOKENS].insert_one(
        {
            "tenant": tenant,
            "user_id": user_id,
            "token_hash": sha256(token),
            "family": family,
            "used_at": None,
            "created": utcnow(),
            "expires_at": expires,
        }
    )
    return expires


@dataclass(frozen=True)
class RefreshUse:
    """What presenting a refresh token found: ``doc`` is the token's document (None: unknown);
    ``reused`` is true when it had been used already (rotated or logged out)."""

    doc: dict[str, Any] | None
    reused: bool = False

    @property
    def family(self) -> str | None:
        if self.doc is None:
            return None
        return str(self.doc.get("family") or self.doc["_id"])


async def use_refresh_token(db: AsyncDatabase, token: str) -> RefreshUse:
    """Mark the refresh token used, at most once (one atomic update decides between two
    concurrent uses), and say what was found."""
    now = utcnow()
    collection = db[Collections.REFRESH_TOKENS]
    doc = await collection.find_one_and_update(
        {"token_hash": sha256(token), "used_at": None}, {"$set": {"used_at": now}}
    )
    if doc is not None:
        return RefreshUse(doc if doc["expires_at"] > now else None)
    doc = await collection.find_one({"token_hash": sha256(token)})
    if doc is None or doc["expires_at"] <= now:
        return RefreshUse(None)
    return RefreshUse(doc, reused=True)


async def revoke_refresh_family(db: AsyncDatabase, use: RefreshUse) -> int:
    """Delete every refresh token of the chain ``use`` belongs to; how many went."""
    if use.doc is None:
        return 0
    query: dict[str, Any] = {"user_id": use.doc["user_id"], "family": use.family}
    if not use.doc.get("family"):  # a token from before chains: it is its own chain
        query = {"_id": use.doc["_id"]}
    return (await db[Collections.REFRESH_TOKENS].delete_many(query)).deleted_count
