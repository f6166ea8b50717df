"""``/api/webhooks``: HTTP receivers of the tenant's events (admin role).

Deliveries are signed POSTs, retried with backoff and logged per webhook
(:mod:`reelhouse.api.events.webhook_worker`). Only ``http``/``https`` URLs are accepted.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from bson import ObjectId
from bson.errors import InvalidId
from fastapi import APIRouter, Body

from reelhouse.api.deps import Admin, Ops, State
from reelhouse.api.events.schemas import DeliveriesQuery, WebhookCreate, WebhookId
from reelhouse.api.events.webhook_worker import (
    DELIVERIES,
    WEBHOOKS,
    describe_delivery,
    describe_hook,
)
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.errors import NotFound
from reelhouse.common.netpolicy import validate_url

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


def _oid(value: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise NotFound(f"no webhook with id {value!r}") from None


async def _hook(state: Any, tenant: str, hook_id: str) -> dict[str, Any]:
    doc = await state.db[WEBHOOKS].find_one({"_id": _oid(hook_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"no webhook with id {hook_id!r}")
    return doc


@router.post("/create", summary="Add a webhook")
async def create(state: State, principal: Admin, body: Annotated[WebhookCreate, Body()]) -> Any:
    """The new webhook, with its secret in clear (the only time it is shown)."""
    await validate_url(state.settings.net_policy(), body.url, role="output", field="url")
    secret = body.secret or secrets.token_urlsafe(32)
    doc = {
        "_id": ObjectId(),
        "tenant": principal.tenant,
        "url": body.url,
        "events": list(dict.fromkeys(body.events)),
        "modules": list(dict.fromkeys(body.modules)),
        "secret": secret,
        "description": body.description,
        "active": body.active,
        "created": utcnow(),
        "created_by": principal.id,
    }
    await state.db[WEBHOOKS].insert_one(doc)
    return {"success": True, **describe_hook(doc), "secret": secret}


@router.post("/getAll", summary="The tenant's webhooks")
async def get_all(state: State, principal: Admin) -> list[dict[str, Any]]:
    """Webhooks oldest first, secrets masked, with their delivery counts by status."""
    rows = []
    async for doc in state.db[WEBHOOKS].find({"tenant": principal.tenant}).sort("created", 1):
        row = describe_hook(doc)
        counts = {}
        for status in ("pending", "delivered", "failed"):
            counts[status] = await state.db[DELIVERIES].count_documents(
                {"webhook_id": row["id"], "status": status}
            )
        row["deliveries"] = counts
        rows.append(row)
    return rows


@router.post("/getDeliveries", summary="A webhook's delivery log, newest first")
async def get_deliveries(
    state: State, principal: Admin, body: Annotated[DeliveriesQuery, Body()]
) -> list[dict[str, Any]]:
    """Each delivery with every attempt (time, status code, error, duration)."""
    hook = await _hook(state, principal.tenant, body.id)
    query: dict[str, Any] = {"webhook_id": str(hook["_id"])}
    if body.status:
        query["status"] = body.status
    cursor = state.db[DELIVERIES].find(query).sort("created", -1).limit(body.limit)
    return [describe_delivery(doc) async for doc in cursor]


@router.post("/remove", summary="Remove a webhook")
async def remove(
    state: State, ops: Ops, principal: Admin, body: Annotated[WebhookId, Body()]
) -> dict[str, Any]:
    """Deletes the webhook; its pending deliveries are cancelled (the log stays)."""
    hook = await _hook(state, principal.tenant, body.id)
    await state.db[WEBHOOKS].delete_one({"_id": hook["_id"]})
    await state.db[DELIVERIES].update_many(
        {"webhook_id": str(hook["_id"]), "status": "pending"},
        {"$set": {"status": "cancelled", "next_attempt_at": None}},
    )
    ops.webhook_wake.set()
    return {"success": True, "id": body.id}
