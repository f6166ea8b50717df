"""Storage targets' behaviour: documents, sealed credentials, the URL policy, the ``test``
probe, and the references recording jobs make to targets. No FastAPI here."""

from __future__ import annotations

import asyncio
from typing import Any

from bson import ObjectId
from cryptography.fernet import Fernet

from reelhouse.common import objectstore
from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.credentials import cached_sealer
from reelhouse.common.errors import NotFound, Unavailable, ValidationFailed
from reelhouse.common.mongo import Collections
from reelhouse.common.netpolicy import AddressRefused, Unresolvable, url_target, validate_url

COLLECTION = Collections.STORAGE_TARGETS


def sealer(state: Any) -> Fernet:
    fernet = cached_sealer(state.settings)
    if fernet is None:
        raise Unavailable("the secret key (REELHOUSE_SECRET_KEY) is not available")
    return fernet


async def check_endpoint(state: Any, url: str) -> None:
    """400 naming ``endpoint_url`` (reason ``forbidden_address``) when the policy refuses it."""
    await validate_url(state.settings.net_policy(), url, role="output", field="endpoint_url")


def present(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "storage_name": doc["storage_name"],
        "provider": doc.get("provider", "other"),
        "endpoint_url": doc["endpoint_url"],
        "region": doc.get("region", "us-east-1"),
        "bucket": doc["bucket"],
        "prefix": doc.get("prefix", ""),
        "path_style": bool(doc.get("path_style")),
        "storage_class": doc.get("storage_class"),
        "credentials_set": bool(doc.get("credentials")),
        "created": format_timestamp(doc["created"]),
        "modified": format_timestamp(doc.get("modified") or doc["created"]),
    }


async def load(db: Any, tenant: str, target_id: str, *, field: str = "id") -> dict[str, Any]:
    doc = None
    if ObjectId.is_valid(target_id):
        doc = await db[COLLECTION].find_one({"_id": ObjectId(target_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"storage target {target_id} not found", field=field)
    return doc


async def check_job_refs(db: Any, tenant: str, body: Any) -> None:
    """A recording body's ``storage_id`` and ``archive_storage_id`` must name targets of the
    tenant (stored state: a 400 naming the field, before anything is stored)."""
    for field in ("storage_id", "archive_storage_id"):
        value = getattr(body, field, None)
        if value is None:
            continue
        found = await db[COLLECTION].find_one(
            {"_id": ObjectId(value), "tenant": tenant}, {"_id": 1}
        )
        if found is None:
            raise ValidationFailed(f"{field}: no storage target {value} in this tenant",
                                   field=field)  # fmt: skip
    if getattr(body, "storage_id", None) is not None and body.output_format == "m3u8":
        raise ValidationFailed(
            "storage_id: m3u8 recordings stay local (a playlist and its segments are not "
            "uploaded); record mpegts or mp4 segments to upload them",
            field="storage_id",
        )


async def probe(state: Any, doc: dict[str, Any]) -> str | None:
    """None when the bucket is reachable and writable, else the failure class."""
    try:
        target = objectstore.Target.of(doc, sealer(state))
    except ValueError:
        return "auth"
    host, port = url_target(target.endpoint_url, role="output")  # type: ignore[misc]
    try:
        await state.settings.net_policy().resolve(host, port)
    except AddressRefused:
        return "forbidden_address"
    except Unresolvable:
        return "unreachable"
    return await asyncio.to_thread(objectstore.probe, target, timeout_s=5.0)


# -- the objects of file records (downloads, archive, removal) --------------------------------


def uploaded(record: dict[str, Any]) -> bool:
    """Whether the file's object is in its bucket and verified."""
    upload = record.get("upload") or {}
    return upload.get("state") == "uploaded" and bool(upload.get("key"))


async def target_of(
    state: Any, tenant: str, storage_id: str
) -> tuple[objectstore.Target, dict[str, Any]]:
    doc = await load(state.db, tenant, storage_id, field="file_id")
    try:
        return objectstore.Target.of(doc, sealer(state)), doc
    except ValueError:
        raise Unavailable("the storage target's credentials do not open with this key") from None


async def presigned_url(state: Any, record: dict[str, Any], *, expires_s: int) -> tuple[str, str]:
    """(presigned GET URL, provider) of an uploaded file's object."""
    upload = record["upload"]
    target, doc = await target_of(state, str(record["tenant"]), str(upload["storage_id"]))
    url = await asyncio.to_thread(
        objectstore.presign_get, target, str(upload["key"]), expires_s=expires_s,
        file_name=str(record.get("file_name") or "") or None,
    )  # fmt: skip
    return url, str(doc.get("provider", "other"))


async def delete_object(state: Any, record: dict[str, Any]) -> bool:
    """Delete the record's object (and an unfinished multipart upload of it). True when there is
    none left to delete; False (logged) when the bucket could not be reached or refused: the
    caller leaves the record ``deleted`` and the janitor's purge tries again."""
    upload = record.get("upload") or {}
    if not upload.get("key"):
        return True
    try:
        target, _ = await target_of(state, str(record["tenant"]), str(upload["storage_id"]))
    except NotFound:
        return True  # the target is gone: there is nothing this engine can reach
    try:
        await asyncio.to_thread(
            objectstore.delete, target, str(upload["key"]), upload_id=upload.get("upload_id")
        )
    except Exception as exc:
        from reelhouse.common.logging import get_logger

        get_logger("reelhouse.api.storage_targets").warning(
            "object_not_deleted", file_id=str(record["_id"]), failure=objectstore.classify(exc)
        )
        return False
    return True
