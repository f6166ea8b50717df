"""Recorded files: listing, signed downloads (HTTP Range), archiving (docs/ARCHITECTURE.md §5).

``getFiles`` lists the caller's file records; ``getDownloadUrl`` signs an expiring URL;
``download/<file_id>`` serves the file to whoever holds a valid signature (no token: players
cannot send headers); ``archiveFile`` moves a ``ready`` file under ``REELHOUSE_ARCHIVE_ROOT``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pymongo import ReturnDocument

from reelhouse.api.accounts.principal import request_credential, tenant_of, verify_credential
from reelhouse.api.deps import Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.files import service
from reelhouse.api.files import signing as downloads
from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings.service import KIND, MODULE
from reelhouse.api.storage_targets import service as storage_targets
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.recording_files import FileRef, FilesQuery
from reelhouse.common.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ValidationFailed,
    error_body,
)
from reelhouse.common.events import FileArchived
from reelhouse.common.files import present_file
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/recording", tags=["recording files"])
log = get_logger("reelhouse.api.files")

DOWNLOADABLE = ("ready", "archived")
STILL_WRITTEN = ("recording", "processing")
STILL_WRITTEN_MESSAGE = "the file is still being written/processed; ask again when it is ready"

MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".mkv": "video/x-matroska",
    ".ts": "video/mp2t",
    ".flv": "video/x-flv",
    ".mp3": "audio/mpeg",
    ".avi": "video/x-msvideo",
    ".m3u8": "application/vnd.apple.mpegurl",
}


@router.post("/getFiles", summary="Recorded files, newest first, with paging")
async def get_files(
    state: State, principal: Principal, body: Annotated[FilesQuery | None, Body()] = None
) -> dict[str, Any]:
    body = body or FilesQuery()
    collection = state.db[Collections.FILES]
    query = service.files_query(tenant_of(principal), body)
    total = await collection.count_documents(query)
    cursor = collection.find(query).sort([("created", -1), ("_id", -1)])
    found = [doc async for doc in cursor.skip(body.offset).limit(body.limit)]
    return {
        "data": [present_file(doc) for doc in found],
        "meta": {"total": total, "limit": body.limit, "offset": body.offset},
    }


@router.post(
    "/getDownloadUrl",
    summary="A signed, expiring download URL of a recorded file",
    responses=documented(409),
)
async def get_download_url(
    request: Request, state: State, principal: Principal, body: FileRef
) -> dict[str, Any]:
    record = await service.load_file(state, tenant_of(principal), body)
    status = record.get("status")
    if status in STILL_WRITTEN:
        return {"status": status, "message": STILL_WRITTEN_MESSAGE}
    if status not in DOWNLOADABLE:
        raise Conflict(
            f"file {body.file_id} is {status}; only ready or archived files can be downloaded",
            field="file_id",
        )
    expires = int(time.time()) + state.settings.download_url_ttl_s
    if storage_targets.uploaded(record):
        # Issue 24: an uploaded, verified file is served by its bucket (a presigned URL, Range
        # works), whether or not a local copy is still kept (docs/DECISIONS.md).
        url, provider = await storage_targets.presigned_url(
            state, record, expires_s=state.settings.download_url_ttl_s
        )
        return {
            "url": url,
            "expires": format_timestamp(datetime.fromtimestamp(expires, UTC)),
            "provider": provider,
        }
    secret: str = request.app.state.download_secret
    return {
        "url": downloads.download_url(secret, body.file_id, expires),
        "expires": format_timestamp(datetime.fromtimestamp(expires, UTC)),
    }


@router.head("/download/{file_id}", include_in_schema=False)
@router.get(
    "/download/{file_id}",
    summary="Download a recorded file (signed URL, no token; HTTP Range supported)",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file (or the Range of it: 206).",
            "content": {t: {} for t in sorted({*MEDIA_TYPES.values(), "application/octet-stream"})},
        },
        206: {
            "description": "The Range of the file asked for.",
            "content": {t: {} for t in sorted({*MEDIA_TYPES.values(), "application/octet-stream"})},
        },
        307: {
            "description": "The file's local copy is gone after its upload: its presigned "
            "URL in the bucket (Location)."
        },
        **documented(
            401, 403, 404, 409, 416, 503, s403="FORBIDDEN: the link is invalid or expired"
        ),
    },
)
async def download(
    request: Request,
    state: State,
    file_id: str,
    expires: Annotated[str | None, Query(description="Unix time the URL expires.")] = None,
    signature: Annotated[str | None, Query(description="HMAC-SHA256, hex.")] = None,
) -> Response:
    secret: str = request.app.state.download_secret
    # Credentials, when sent, scope the download to their tenant (another tenant's file is 404)
    # and stand in for the signature; without them the signature is the only authority.
    credential = request_credential(request)
    principal = await verify_credential(request, credential) if credential else None
    if principal is None and not downloads.signature_valid(secret, file_id, expires, signature):
        raise Forbidden(
            "the download link is invalid or has expired; ask getDownloadUrl for a new one",
            field="signature",
        )
    if not ObjectId.is_valid(file_id):
        raise NotFound(f"file {file_id} not found", field="file_id")
    query: dict[str, Any] = {"_id": ObjectId(file_id)}
    if principal is not None:
        query["tenant"] = tenant_of(principal)
    record = await state.db[Collections.FILES].find_one(query)
    if record is None or record.get("status") not in (*DOWNLOADABLE, "archiving"):
        raise NotFound(f"file {file_id} is no longer available", field="file_id")
    path = service.media_path(state.settings, record["file_path"])
    if not path.is_file() and storage_targets.uploaded(record):
        # A local link of a file whose local copy went after its upload: to the bucket.
        url, _ = await storage_targets.presigned_url(
            state, record, expires_s=state.settings.download_url_ttl_s
        )
        return RedirectResponse(url, status_code=307)
    if not path.is_file():
        if record.get("status") == "archiving":
            raise Conflict(
                "the file is being moved to the archive; try again in a moment",
                field="file_id",
                headers={"Retry-After": "2"},
            )
        raise NotFound(f"file {file_id} is missing on disk", field="file_id")
    size = path.stat().st_size
    if service.unsatisfiable_range(request.headers.get("range"), size):
        message = f"the requested range is outside the file ({size} bytes)"
        body = error_body("RANGE_NOT_SATISFIABLE", message, field="Range")
        return JSONResponse(body, status_code=416, headers={"Content-Range": f"bytes */{size}"})
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        filename=path.name,
        content_disposition_type="attachment",
    )


@router.post(
    "/archiveFile",
    summary="Move a ready file to the archive (downloads keep working)",
    responses=documented(409),
)
async def archive_file(state: State, principal: Operator, body: FileRef) -> dict[str, Any]:
    tenant = tenant_of(principal)
    record = await service.load_file(state, tenant, body)
    files = state.db[Collections.FILES]
    claimed = await files.find_one_and_update(
        {"_id": record["_id"], "tenant": tenant, "status": "ready"},
        {"$set": {"status": "archiving", "modified": utcnow()}},
        return_document=ReturnDocument.AFTER,
    )
    if claimed is None:
        current = (await files.find_one({"_id": record["_id"]}) or {}).get("status", "deleted")
        raise ValidationFailed(
            f"file {body.file_id} is {current}; only ready files can be archived", field="file_id"
        )
    if storage_targets.uploaded(claimed):
        return await _archive_object(state, tenant, body, claimed)
    try:
        moves = service.archive_moves(state.settings, claimed)
        await asyncio.to_thread(service.move_all, moves)
    except BaseException:
        await files.update_one(
            {"_id": record["_id"], "status": "archiving"},
            {"$set": {"status": "ready", "modified": utcnow()}},
        )
        raise
    now = utcnow()
    archived = await files.find_one_and_update(
        {"_id": record["_id"]},
        {
            "$set": {
                "status": "archived",
                "archived_at": now,
                "modified": now,
                "file_path": str(moves[0][1]),
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    return await _archived(state, tenant, body, archived, str(moves[0][1]))


async def _archive_object(
    state: Any, tenant: str, body: FileRef, claimed: dict[str, Any]
) -> dict[str, Any]:
    """Issue 24: the file's object goes to the job's archive target (another storage target
    and/or a storage class) by a copy (server-side within one account), then the original is
    deleted. On any failure the file is ``ready`` again and the original stays."""
    files = state.db[Collections.FILES]
    try:
        job = await jobs.load(state.db, KIND, tenant, body.record_id)
        moved = await service.archive_object(state, tenant, job, claimed)
    except BaseException:
        await files.update_one(
            {"_id": claimed["_id"], "status": "archiving"},
            {"$set": {"status": "ready", "modified": utcnow()}},
        )
        raise
    now = utcnow()
    archived = await files.find_one_and_update(
        {"_id": claimed["_id"]},
        {"$set": {"status": "archived", "archived_at": now, "modified": now, **moved}},
        return_document=ReturnDocument.AFTER,
    )
    return await _archived(state, tenant, body, archived, moved["upload.key"])


async def _archived(
    state: Any, tenant: str, body: FileRef, archived: dict[str, Any], where: str
) -> dict[str, Any]:
    presented = present_file(archived)
    log.info(
        "recording_file_archived",
        job_id=body.record_id,
        file_id=body.file_id,
        path=where,
    )
    try:
        event = FileArchived(
            module=MODULE,
            job_id=body.record_id,
            tenant=tenant,
            file=presented,
        )
        await state.bus.publish(
            state.bus.subjects.event(MODULE, body.record_id, "file_archived"), event
        )
    except Exception as exc:
        log.warning("event_not_sent", job_id=body.record_id, event="file_archived", error=str(exc))
    return {**presented, "success": True}


@router.post("/reprocessFile", summary="Remux a ready or failed file again and renew its report")
async def reprocess_file(state: State, principal: Operator, body: FileRef) -> dict[str, Any]:
    """Queue the file for a recorder: status ``processing`` until it is ``ready`` again (remuxed
    without re-encoding, integrity renewed), ``failed`` (``missing``), or back to its earlier
    status with ``processing_error`` if FFmpeg cannot remux it. 400 for any other status."""
    tenant = tenant_of(principal)
    record = await service.load_file(state, tenant, body)
    files = state.db[Collections.FILES]
    now = utcnow()
    for status in ("ready", "failed"):
        queued = await files.find_one_and_update(
            {"_id": record["_id"], "tenant": tenant, "status": status},
            {"$set": {"status": "processing", "status_before": status, "reprocess": True,
                      "reprocess_requested_at": now, "modified": now},
             "$unset": {"processing_error": ""}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if queued is not None:
            log.info("recording_file_reprocess_requested", job_id=body.record_id,
                     file_id=body.file_id)  # fmt: skip
            return {**present_file(queued), "success": True}
    current = (await files.find_one({"_id": record["_id"]}) or {}).get("status", "deleted")
    raise ValidationFailed(
        f"file {body.file_id} is {current}; only ready or failed files can be reprocessed",
        field="file_id",
    )
