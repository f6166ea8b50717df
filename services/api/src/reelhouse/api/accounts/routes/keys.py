"""``/api/keys``: API keys of the caller's tenant (admin only).

The key itself is in the ``create`` answer only; the database keeps its SHA-256.
A key's role is at most its creator's, at creation and on every use afterwards: a key acts with
``min(its role, what its creator may do now)``, and is refused once its creator (a user, or the
key that made it) is removed. ``remove`` revokes it on every replica at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body

from reelhouse.api.accounts import service as accounts
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.accounts.schemas import KeyIn, KeyOut, NewKey
from reelhouse.api.accounts.service import Collections
from reelhouse.api.deps import Admin, State
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.errors import Forbidden, NotFound
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.keys")

router = APIRouter(prefix="/api/keys", tags=["keys"])


def present(doc: dict[str, Any]) -> KeyOut:
    return KeyOut(
        id=str(doc["_id"]),
        name=doc["name"],
        role=doc["role"],
        prefix=doc["prefix"],
        created=format_timestamp(doc["created"]),
    )


@router.post("/create", summary="Create an API key; the answer is the only time it is shown")
async def create(state: State, principal: Admin, body: KeyIn) -> NewKey:
    if not principal.allows(body.role):
        raise Forbidden(f"a key cannot have more than your role ({principal.role})", field="role")
    key = accounts.new_key()
    doc = {
        "_id": ObjectId(),
        "tenant": tenant_of(principal),
        "name": body.name,
        "role": body.role,
        "key_hash": accounts.sha256(key),
        "prefix": key[: len(accounts.KEY_PREFIX) + 6],
        "created": utcnow(),
        "created_by": principal.id,
        "created_by_kind": principal.kind,
    }
    await state.db[Collections.API_KEYS].insert_one(doc)
    log.info("api_key_created", key_id=str(doc["_id"]), role=body.role)
    return NewKey(**present(doc).model_dump(), key=key)


@router.post("/getAll", summary="API keys of the caller's tenant (without the keys)")
async def get_all(
    state: State, principal: Admin, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> list[KeyOut]:
    cursor = state.db[Collections.API_KEYS].find({"tenant": tenant_of(principal)})
    return [present(doc) async for doc in cursor.sort("created", 1)]


@router.delete("/remove", summary="Revoke an API key")
async def remove(state: State, principal: Admin, body: IdBody) -> dict[str, Any]:
    result = await state.db[Collections.API_KEYS].delete_one(
        {"_id": ObjectId(body.id), "tenant": tenant_of(principal)}
    )
    if result.deleted_count == 0:
        raise NotFound(f"API key {body.id} not found", field="id")
    await state.credentials.changed(reason="key_removed", key_id=body.id)
    log.info("api_key_removed", key_id=body.id)
    return {"id": body.id, "success": True}
