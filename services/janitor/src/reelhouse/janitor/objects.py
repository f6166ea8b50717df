"""Deleting a file record's object from its storage target (issue 24): retention and purges
delete the object before the record, so a record whose object could not be deleted stays (as
``deleted``) and the next pass tries again."""

from __future__ import annotations

import asyncio
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common import objectstore
from reelhouse.common.credentials import cached_sealer
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.janitor.objects")


async def delete_object_of(db: AsyncDatabase, settings: Any, record: dict[str, Any]) -> bool:
    """Delete the record's object (and abort its unfinished multipart upload); False when it has
    none. Raises when the object may still be there (no target, no key, the bucket refused)."""
    upload = record.get("upload") or {}
    key = upload.get("key")
    if not key:
        return False
    storage_id = str(upload.get("storage_id") or "")
    doc = await db[objectstore.STORAGE_TARGETS].find_one(
        {"_id": ObjectId(storage_id), "tenant": record.get("tenant")}
    ) if ObjectId.is_valid(storage_id) else None  # fmt: skip
    if doc is None:
        # The target is gone (removed with its objects, or never there): nothing to reach.
        log.warning("object_target_gone", file_id=str(record["_id"]), storage_id=storage_id)
        return False
    fernet = cached_sealer(settings) if settings is not None else None
    if fernet is None:
        raise RuntimeError("the secret key is not available to open the target's credentials")
    target = objectstore.Target.of(doc, fernet)
    await asyncio.to_thread(objectstore.delete, target, str(key), upload_id=upload.get("upload_id"))
    log.info("object_deleted", file_id=str(record["_id"]), storage_id=storage_id, key=key)
    return True
