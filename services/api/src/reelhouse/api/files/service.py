"""The recorded files' behaviour: the getFiles query, a job's file record, paths under the
storage and archive roots, Range checks and the archive moves. The routes are in
:mod:`reelhouse.api.files.routes`; signed download URLs in :mod:`reelhouse.api.files.signing`.
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings.service import KIND
from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.recording_files import FileRef, FilesQuery
from reelhouse.common.errors import Conflict, Forbidden, NotFound, ValidationFailed
from reelhouse.common.files import hls_segments, is_under, job_dir
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.api.files")


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


async def load_file(state: Any, tenant: str, ref: FileRef) -> dict[str, Any]:
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


def media_path(settings: ApiSettings, file_path: str) -> Path:
    """The record's path resolved, if it is under the storage root or the archive root."""
    for root in (settings.storage_root, settings.archive_root):
        if is_under(root, file_path):
            return Path(file_path).resolve()
    raise Forbidden("the file's path is outside the storage and archive roots", field="file_id")


def unsatisfiable_range(range_header: str | None, size: int) -> bool:
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


def move_all(moves: list[tuple[Path, Path]]) -> None:
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


def archive_moves(settings: ApiSettings, record: dict[str, Any]) -> list[tuple[Path, Path]]:
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


async def archive_object(
    state: Any, tenant: str, job: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    """Copy an uploaded file's object to the job's archive target, verify it, delete the
    original (and the local copy, unless the job keeps it); the record fields that change."""
    import asyncio

    from reelhouse.api.storage_targets import service as storage_targets
    from reelhouse.common import objectstore
    from reelhouse.common.contracts.base import utcnow

    upload = record["upload"]
    source, _ = await storage_targets.target_of(state, tenant, str(upload["storage_id"]))
    dest_id = str(job.get("archive_storage_id") or upload["storage_id"])
    storage_class = job.get("archive_storage_class")
    if dest_id == str(upload["storage_id"]) and not storage_class:
        raise ValidationFailed(
            "the file is in object storage and its job names no archive_storage_id or "
            "archive_storage_class to archive it to",
            field="file_id",
        )
    dest, _ = await storage_targets.target_of(state, tenant, dest_id)
    name = Path(str(record["file_path"])).name
    dest_key = dest.key(str(record["entity_id"]), name)
    if dest_id == str(upload["storage_id"]):
        dest_key = "/".join(
            p for p in (dest.prefix, "archive", str(record["entity_id"]), name) if p
        )
    try:
        head = await asyncio.to_thread(
            objectstore.copy, source, str(upload["key"]), dest, dest_key,
            storage_class=storage_class or dest.storage_class,
        )  # fmt: skip
    except Exception as exc:
        from reelhouse.common.errors import UpstreamError

        failure = objectstore.classify(exc)
        raise UpstreamError(
            f"the object could not be copied to the archive target ({failure})",
            field="file_id",
            reason=failure,
        ) from None
    if int(head.get("ContentLength", -1)) != int(upload.get("size", -2)):
        raise Conflict("the archived copy's size differs from the file's", field="file_id")
    with contextlib.suppress(Exception):  # the copy is verified; a leftover original is harmless
        await asyncio.to_thread(objectstore.delete, source, str(upload["key"]))
    changes: dict[str, Any] = {
        "upload.storage_id": dest_id,
        "upload.key": dest_key,
        "upload.etag": str(head.get("ETag", "")).strip('"'),
        "upload.storage_class": head.get("StorageClass") or storage_class or "STANDARD",
        "upload.archived_from": {"storage_id": str(upload["storage_id"]), "key": upload["key"]},
    }
    path = Path(str(record["file_path"]))
    if not job.get("keep_local") and is_under(settings_root(state), path):
        await asyncio.to_thread(path.unlink, missing_ok=True)
        changes["local_removed_at"] = utcnow()
    return changes


def settings_root(state: Any) -> Path:
    return Path(state.settings.storage_root)
