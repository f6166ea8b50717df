"""``/api/users``: accounts of the caller's tenant (admin only).

Usernames are unique across tenants, since login names only a username. Only the bootstrap
admin may name another ``tenant`` in ``create`` (that is how a tenant gets its first admin).

A password or role change bumps the user's token version and ``remove`` deletes the user: either
way the user's access tokens are refused on every replica at once (the change is published on
``<p>.auth.changed``), their refresh tokens are deleted, and API keys they made hold at most
their new role (none, once removed).
"""

from __future__ import annotations

from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body
from pymongo.errors import DuplicateKeyError

from reelhouse.api.accounts import service as accounts
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.accounts.schemas import UserIn, UserOut, UserUpdate
from reelhouse.api.accounts.service import Collections
from reelhouse.api.deps import Admin, State
from reelhouse.api.errors import documented
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.errors import Conflict, Forbidden, NotFound
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.users")

router = APIRouter(prefix="/api/users", tags=["users"])


def present(doc: dict[str, Any]) -> UserOut:
    return UserOut(
        id=str(doc["_id"]),
        username=doc["username"],
        role=doc["role"],
        tenant=doc["tenant"],
        created=format_timestamp(doc["created"]),
        modified=format_timestamp(doc["modified"]),
    )


async def _load(state: State, tenant: str, user_id: str) -> dict[str, Any]:
    doc = await state.db[Collections.USERS].find_one({"_id": ObjectId(user_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"user {user_id} not found", field="id")
    return doc


@router.post(
    "/create",
    summary="Create a user (admin)",
    responses=documented(409, s409="CONFLICT: the username is taken"),
)
async def create(state: State, principal: Admin, body: UserIn) -> UserOut:
    tenant = body.tenant or tenant_of(principal)
    if tenant != tenant_of(principal) and principal.kind != "bootstrap":
        raise Forbidden("only the bootstrap admin may create users in another tenant")
    taken = Conflict(f"username {body.username!r} is taken", field="username")
    # The unique index decides; this check covers the moments before it exists (fresh database).
    if await state.db[Collections.USERS].find_one({"username": body.username}, {"_id": 1}):
        raise taken
    now = utcnow()
    doc = {
        "_id": ObjectId(),
        "tenant": tenant,
        "username": body.username,
        "password_hash": accounts.hash_password(body.password),
        "role": body.role,
        "token_version": 0,
        "created": now,
        "modified": now,
        "created_by": principal.id,
    }
    try:
        await state.db[Collections.USERS].insert_one(doc)
    except DuplicateKeyError:
        raise taken from None
    log.info("user_created", user_id=str(doc["_id"]), tenant=tenant, role=body.role)
    return present(doc)


@router.post("/getAll", summary="Users of the caller's tenant (admin)")
async def get_all(
    state: State, principal: Admin, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> list[UserOut]:
    cursor = state.db[Collections.USERS].find({"tenant": tenant_of(principal)}).sort("created", 1)
    return [present(doc) async for doc in cursor]


@router.post("/update", summary="Change a user's role or password (admin)")
async def update(state: State, principal: Admin, body: UserUpdate) -> UserOut:
    tenant = tenant_of(principal)
    doc = await _load(state, tenant, body.id)
    change: dict[str, Any] = {"modified": utcnow()}
    if body.role is not None:
        change["role"] = body.role
    if body.password is not None:
        change["password_hash"] = accounts.hash_password(body.password)
    revoke = body.password is not None or body.role is not None  # sign in again, new facts
    update: dict[str, Any] = {"$set": change}
    if revoke:
        update["$inc"] = {"token_version": 1}
    await state.db[Collections.USERS].update_one({"_id": doc["_id"], "tenant": tenant}, update)
    if revoke:
        await state.db[Collections.REFRESH_TOKENS].delete_many({"user_id": body.id})
        reason = "password_changed" if body.password is not None else "role_changed"
        await state.credentials.changed(reason=reason, user_id=body.id)
    log.info("user_updated", user_id=body.id, role=body.role)
    return present({**doc, **change})


@router.delete("/remove", summary="Delete a user and revoke their refresh tokens (admin)")
async def remove(state: State, principal: Admin, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await _load(state, tenant, body.id)
    await state.db[Collections.USERS].delete_one({"_id": doc["_id"], "tenant": tenant})
    await state.db[Collections.REFRESH_TOKENS].delete_many({"user_id": body.id})
    await state.credentials.changed(reason="user_removed", user_id=body.id)
    log.info("user_removed", user_id=body.id)
    return {"id": body.id, "success": True}
