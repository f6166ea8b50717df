"""``Idempotency-Key`` on create calls: the same key and body within 24 h return the first result.

The first call with a key stores a placeholder (``_id`` = hash of tenant, route and key; unique,
so concurrent retries race on one insert), runs the create, then stores the response. A retry
with the same body gets that response back (header ``Idempotent-Replayed: true``); the same key
with another body is 409 ``CONFLICT``, as is a retry while the first call is still running. A
create that fails removes its placeholder, so the key can be used again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from reelhouse.api.accounts.principal import AuthPrincipal
from reelhouse.api.accounts.service import Collections
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.errors import Conflict
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.idempotency")

TTL = timedelta(hours=24)
HEADER = "Idempotency-Key"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


async def once(
    db: AsyncDatabase,
    principal: AuthPrincipal,
    route: str,
    key: str | None,
    body: BaseModel,
    response: Response,
    create: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run ``create`` unless this key and body already ran it; then return its result."""
    if key is None:
        return await create()
    collection = db[Collections.IDEMPOTENCY]
    doc_id = _digest(principal.tenant, route, key)
    body_hash = _digest(body.model_dump_json())
    now = utcnow()
    placeholder = {
        "_id": doc_id,
        "tenant": principal.tenant,
        "body_hash": body_hash,
        "created": now,
        "expires_at": now + TTL,
    }
    for _ in range(2):
        try:
            await collection.insert_one(placeholder)
            break
        except DuplicateKeyError:
            first = await collection.find_one({"_id": doc_id})
            if first is None or first["expires_at"] <= now:  # gone or stale: take it over
                await collection.delete_one({"_id": doc_id, "expires_at": {"$lte": now}})
                continue
            if first["body_hash"] != body_hash:
                raise Conflict(
                    "this Idempotency-Key was used with a different body; use a new key",
                    field=HEADER,
                ) from None
            if "response" not in first:
                raise Conflict(
                    "a request with this Idempotency-Key is still running; retry shortly",
                    field=HEADER,
                    headers={"Retry-After": "1"},
                ) from None
            response.headers["Idempotent-Replayed"] = "true"
            return json.loads(first["response"])
    else:
        raise Conflict("this Idempotency-Key is busy; retry shortly", field=HEADER)
    try:
        result = await create()
    except BaseException:
        await collection.delete_one({"_id": doc_id})
        raise
    try:
        stored = json.dumps(jsonable_encoder(result))
        await collection.update_one({"_id": doc_id}, {"$set": {"response": stored}})
    except Exception as exc:  # the create happened: answer it; a retry then gets a 409
        log.warning("idempotency_not_stored", route=route, error=str(exc)[:200])
    return result
