"""Recorded files: listing, signed downloads (HTTP Range), the archive tier (ARCHITECTURE §5).

``getFiles`` lists the caller's file records; ``getDownloadUrl`` signs an expiring URL;
``download/<file_id>`` serves the file to whoever holds a valid signature (no token: players
cannot send headers); ``archiveFile`` moves a ``ready`` file under ``REELHOUSE_ARCHIVE_ROOT``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pymongo import ReturnDocument

from reelhouse.api.accounts.principal import request_credential, tenant_of, verify_credential
from reelhouse.api.deps import Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.files import signing as downloads
from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings.service import KIND, MODULE
from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.messages import JobEvent
from reelhouse.common.contracts.recording_files import FileRef, FilesQuery
from reelhouse.common.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ValidationFailed,
    error_body,
)
from reelhouse.common.files import hls_segments, is_under, job_dir, present_file
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


def files_query(tenant: str, body: FilesQuery) -> dict[str, Any]:
    """The MongoDB filter of a getFiles body (every value was typed by the model)."""
    query: dict[str, Any] = {"tenant": tenant}
    if body.record_id is not None:
        query["entity_id"] = body.record_id
    query["status"] = body.status if body.status is not None else {"$ne": "deleted"}
    created: dict[str, datetime] = {}
    if body.from_ is not None:
        created["$gte"] = body.from_
    if body.to is not None:
        created["$lt"] = body.to
    if created:
        query["created"] = created
    return query


@router.post("/getFiles", summary="Recorded files, newest first, with paging")
async def get_files(
    state: State, principal: Principal, body: Annotated[FilesQuery | None, Body()] = None
) -> dict[str, Any]:
    body = body or FilesQuery()
    collection = state.db[Collections.FILES]
    query = files_query(tenant_of(principal), body)
    total = await collection.count_documents(query)
    cursor = collection.find(query).sort([("created", -1), ("_id", -1)])
    found = [doc async for doc in cursor.skip(body.offset).limit(body.limit)]
    return {
        "data": [present_file(doc) for doc in found],
        "meta": {"total": total, "limit": body.limit, "offset": body.offset},
    }


async def _file(state: Any, tenant: str, ref: FileRef) -> dict[str, Any]:
    """The tenant's file record of the job (job checked first), or 404 naming ``file_id``."""
    await jobs.load(state.db, KIND, tenant, ref.record_id)
    record = await state.db[Collections.FILES].find_one(
        {"_id": ObjectId(ref.file_id), "entity_id": ref.record_id, "tenant": tenant}
    )
    if record is None:
        raise NotFound(
            f"file {ref.file_id} not found in recording {ref.record_id}", field="file_id"
        )
    return record


@router.post(
    "/getDownloadUrl",
    summary="A signed, expiring download URL of a recorded file",
    responses=documented(409),
)
async def get_download_url(
    request: Request, state: State, principal: Principal, body: FileRef
) -> dict[str, Any]:
    record = await _file(state, tenant_of(principal), body)
    status = record.get("status")
    if status in STILL_WRITTEN:
        return {"status": status, "message": STILL_WRITTEN_MESSAGE}
    if status not in DOWNLOADABLE:
        raise Conflict(
            f"file {body.file_id} is {status}; only ready or archived files can be downloaded",
            field="file_id",
        )
    expires = int(time.time()) + state.settings.download_url_ttl_s
    secret: str = request.app.state.download_secret
    return {
        "url": downloads.download_url(secret, body.file_id, expires),
        "expires": format_timestamp(datetime.fromtimestamp(expires, UTC)),
    }


def _media_path(settings: ApiSettings, file_path: str) -> Path:
    """The record's path resolved, if it is under the storage root or the archive root."""
    for root in (settings.storage_root, settings.archive_root):
        if is_under(root, file_path):
            return Path(file_path).resolve()
    raise Forbidden("the file's path is outside the storage and archive roots", field="file_id")


def _unsatisfiable(range_header: str | None, size: int) -> bool:
    """True when a ``bytes=`` Range asks only for bytes the file does not have (→ 416)."""
    if not range_header or not range_header.strip().lower().startswith("bytes="):
        return False
    parts = [p.strip() for p in range_header.split("=", 1)[1].split(",") if p.strip()]
    for part in parts:
        start, _, end = part.partition("-")
        start, end = start.strip(), end.strip()
        if start.isdigit() and int(start) >= size:
            return True
        if not start and end.isdigit() and (size == 0 or int(end) == 0):
            return True
    return False


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
    path = _media_path(state.settings, record["file_path"])
    if not path.is_file():
        if record.get("status") == "archiving":
            raise Conflict(
                "the file is being moved to the archive; try again in a moment",
                field="file_id",
                headers={"Retry-After": "2"},
            )
        raise NotFound(f"file {file_id} is missing on disk", field="file_id")
    size = path.stat().st_size
    if _unsatisfiable(request.headers.get("range"), size):
        message = f"the requested range is outside the file ({size} bytes)"
        body = error_body("RANGE_NOT_SATISFIABLE", message, field="Range")
        return JSONResponse(body, status_code=416, headers={"Content-Range": f"bytes */{size}"})
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        filename=path.name,
        content_disposition_type="attachment",
    )


def _move_all(moves: list[tuple[Path, Path]]) -> None:
    """Move each (source, target); on failure move back what moved, then re-raise."""
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            try:
                shutil.move(target, source)
            except OSError as exc:
                log.error("archive_rollback_failed", path=str(target), error=str(exc))
        raise


def _archive_moves(settings: ApiSettings, record: dict[str, Any]) -> list[tuple[Path, Path]]:
    """(source, target) of the file and, for a playlist, its segments; checks every path."""
    source = Path(record["file_path"])
    if not is_under(settings.storage_root, source):
        raise ValidationFailed("the file's path is outside the storage root", field="file_id")
    source = source.resolve()
    if not source.is_file():
        raise Conflict(f"file {record['_id']} is missing on disk", field="file_id")
    folder = job_dir(settings.archive_root, record["entity_id"])
    moves = [(source, folder / source.name)]
    if source.suffix == ".m3u8":
        for segment in hls_segments(source):
            if is_under(settings.storage_root, segment) and segment.is_file():
                moves.append((segment.resolve(), folder / segment.name))
    for _, target in moves:
        if not is_under(settings.archive_root, target):
            raise ValidationFailed("archive path is outside the archive root", field="file_id")
        if target.exists():
            raise Conflict(f"{target.name} already exists in the archive", field="file_id")
    return moves


@router.post(
    "/archiveFile",
    summary="Move a ready file to the archive (downloads keep working)",
    responses=documented(409),
)
async def archive_file(state: State, principal: Operator, body: FileRef) -> dict[str, Any]:
    tenant = tenant_of(principal)
    record = await _file(state, tenant, body)
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
    try:
        moves = _archive_moves(state.settings, claimed)
        await asyncio.to_thread(_move_all, moves)
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
    presented = present_file(archived)
    log.info(
        "recording_file_archived",
        job_id=body.record_id,
        file_id=body.file_id,
        path=str(moves[0][1]),
    )
    try:
        event = JobEvent(
            type="file_archived",
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
    record = await _file(state, tenant, body)
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
