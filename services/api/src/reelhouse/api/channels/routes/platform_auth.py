"""Platform authentication (issue 22; the channel-recorder seed's "Platform Authentication",
which names no paths): a tenant's credentials for a platform, write-only.

``PUT /api/platform-auth/{platform}`` seals them (``reelhouse.common.credentials``) and publishes
``platform_auth_updated``; reads answer only ``configured``, when they were set and whether the
platform has refused them since (``status``: ``valid`` or ``expired``). Setting and removing
them is for admins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import Admin, Principal, State
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.channels import Platform
from reelhouse.common.credentials import (
    PlatformCredentials,
    auth_id,
    publish_auth_event,
    seal,
)
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.api.platform_auth")

router = APIRouter(prefix="/api/platform-auth", tags=["channels"])

PLATFORMS: tuple[str, ...] = Platform.__args__  # type: ignore[attr-defined]


def _ts(value: Any) -> Any:
    return format_timestamp(value) if isinstance(value, datetime) else value


def _present(platform: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    if doc is None:
        return {"platform": platform, "configured": False, "set_at": None, "status": None,
                "expired_at": None, "last_error": None}  # fmt: skip
    return {"platform": platform, "configured": True, "set_at": _ts(doc.get("set_at")),
            "status": doc.get("status", "valid"), "expired_at": _ts(doc.get("expired_at")),
            "last_error": doc.get("last_error")}  # fmt: skip


@router.get("", summary="Which platforms have credentials (never the credentials)")
async def list_auth(state: State, principal: Principal) -> dict[str, Any]:
    tenant = tenant_of(principal)
    found = {d["platform"]: d async for d in state.db[Collections.PLATFORM_AUTH].find(
        {"tenant": tenant}, {"sealed": 0})}  # fmt: skip
    return {"platforms": [_present(p, found.get(p)) for p in PLATFORMS], "success": True}


@router.get("/{platform}", summary="Whether a platform has credentials")
async def get_auth(state: State, principal: Principal, platform: Platform) -> dict[str, Any]:
    doc = await state.db[Collections.PLATFORM_AUTH].find_one(
        {"_id": auth_id(tenant_of(principal), platform)}, {"sealed": 0}
    )
    return {**_present(platform, doc), "success": True}


@router.put("/{platform}", summary="Set a platform's credentials (encrypted at rest)")
async def set_auth(
    state: State, principal: Admin, platform: Platform, body: PlatformCredentials
) -> dict[str, Any]:
    tenant = tenant_of(principal)
    now, key = utcnow(), auth_id(tenant, platform)
    await state.db[Collections.PLATFORM_AUTH].update_one(
        {"_id": key},
        {"$set": {"tenant": tenant, "platform": platform, "sealed": seal(state.sealer, body),
                  "set_at": now, "set_by": principal.id, "status": "valid",
                  "expired_at": None, "last_error": None, "modified": now},
         "$setOnInsert": {"created": now}},
        upsert=True,
    )  # fmt: skip
    log.info("platform_auth_set", platform=platform, by=principal.id)
    try:
        await publish_auth_event(state.bus, "platform_auth_updated", auth=key, tenant=tenant,
                                 platform=platform, set_at=now)  # fmt: skip
    except Exception as exc:
        log.warning("event_not_sent", event="platform_auth_updated", error=str(exc)[:200])
    doc = await state.db[Collections.PLATFORM_AUTH].find_one({"_id": key}, {"sealed": 0})
    return {**_present(platform, doc), "success": True}


@router.delete("/{platform}", summary="Forget a platform's credentials")
async def delete_auth(state: State, principal: Admin, platform: Platform) -> dict[str, Any]:
    tenant = tenant_of(principal)
    key = auth_id(tenant, platform)
    result = await state.db[Collections.PLATFORM_AUTH].delete_one({"_id": key})
    log.info("platform_auth_removed", platform=platform, found=bool(result.deleted_count))
    return {**_present(platform, None), "success": True}
