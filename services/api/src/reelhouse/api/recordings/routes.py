"""``/api/recording/*``: the Recordings module, shaped exactly as ``seeds/recordings-api.txt``.

The API writes desired state (``active``, config, ``generation``) and publishes a hint; recorders
reconcile (docs/ARCHITECTURE.md §2). Responses are job objects with ``_id`` and ``id``, ``input``
as the populated list, ``recordedFiles`` populated, ``created``/``modified`` and ``success: true``.
The module's behaviour is in :mod:`reelhouse.api.recordings.service`; what restreams share with
it, in :mod:`reelhouse.api.jobs.service`.
"""

from __future__ import annotations

from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Response
from pymongo import ReturnDocument

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings.service import (
    KIND,
    MODULE,
    load_populated,
    populate,
    publish_event,
    set_paused,
)
from reelhouse.api.storage_targets import service as storage_targets
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.contracts.recording import (
    ListBody,
    RecordingIn,
    RecordingUpdate,
    RemoveFileBody,
)
from reelhouse.common.errors import Conflict, NotFound
from reelhouse.common.files import delete_file_record_from_disk, delete_job_dir, present_file
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/recording", tags=["recordings"])
log = get_logger("reelhouse.api.recordings")


@router.post(
    "/create",
    summary="Create a recording job",
    responses=documented(
        409,
        507,
        s409="CONFLICT: this Idempotency-Key was used with another body, or its first "
        "call is still running",
    ),
)
async def create(
    state: State,
    principal: Operator,
    body: RecordingIn,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    tenant = tenant_of(principal)

    async def run() -> dict[str, Any]:
        full = await jobs.with_defaults(state.db, MODULE, body)
        await storage_targets.check_job_refs(state.db, tenant, full)
        job_id = await jobs.create_job(state, KIND, tenant, full.config(), {"input": [full.input]})
        return await load_populated(state.db, tenant, job_id, state.live)

    key = idempotency_key
    return await idempotency.once(state.db, principal, "recording", key, body, response, run)


@router.post("/getCount", summary="How many recording jobs there are")
async def get_count(
    state: State, principal: Principal, body: Annotated[ListBody | None, Body()] = None
) -> dict[str, int]:
    count = await jobs.count_jobs(state.db, KIND, tenant_of(principal), body or ListBody())
    return {"count": count}


@router.post("/getAll", summary="Recording jobs, populated")
async def get_all(
    state: State, principal: Principal, body: Annotated[ListBody | None, Body()] = None
) -> list[dict[str, Any]]:
    found = await jobs.find_jobs(state.db, KIND, tenant_of(principal), body or ListBody())
    return await populate(state.db, found, state.live)


@router.post("/getById", summary="One recording job, populated")
async def get_by_id(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    return await load_populated(state.db, tenant_of(principal), body.id, state.live)


@router.post(
    "/update",
    summary="Change a recording job; a running job restarts with it",
    responses=documented(507),
)
async def update(state: State, principal: Operator, body: RecordingUpdate) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await storage_targets.check_job_refs(state.db, tenant, body)
    await jobs.update_job(state, KIND, tenant, body.id, body.config(), {"input": [body.input]})
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post(
    "/start",
    summary="Mark active and (re)start the recording worker",
    responses=documented(507),
)
async def start(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await jobs.set_active(state, KIND, tenant, body.id, active=True)
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post("/stop", summary="Mark inactive and stop the recording worker")
async def stop(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await jobs.set_active(state, KIND, tenant, body.id, active=False)
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post(
    "/pause",
    summary="Close the current part; the job stays active but idle",
    responses=documented(409),
)
async def pause(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    if await set_paused(state, tenant, body.id, paused=True):
        await publish_event(state, tenant, body.id, "job_paused")
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post(
    "/resume",
    summary="Open a new part of the paused session",
    responses=documented(409, 507),
)
async def resume(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    if await set_paused(state, tenant, body.id, paused=False):
        await publish_event(state, tenant, body.id, "job_resumed")
    return await load_populated(state.db, tenant, body.id, state.live)


@router.delete("/remove", summary="Stop, then delete the job, its input, its files")
async def remove(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    db = state.db
    loaded = await load_populated(db, tenant, body.id, state.live)
    await jobs.stop_and_wait(state, KIND, body.id)
    root = state.settings.storage_root
    # Every record is marked `deleted` before any is read: an upload still running then either
    # wrote its key before (read here, its object deleted below) or finds the mark after and
    # deletes what it put itself (the janitor's uploader; docs/DECISIONS.md, "Object storage").
    await db[Collections.FILES].update_many(
        {"entity_id": body.id, "tenant": tenant, "status": {"$ne": "deleted"}},
        {"$set": {"status": "deleted", "deleted_at": utcnow(), "modified": utcnow()}},
    )
    kept = []  # records whose object could not be deleted: left `deleted` for the janitor
    async for record in db[Collections.FILES].find({"entity_id": body.id, "tenant": tenant}):
        if not await storage_targets.delete_object(state, record):
            kept.append(record["_id"])
        try:
            delete_file_record_from_disk(root, record, archive_root=state.settings.archive_root)
        except Exception as exc:
            log.warning("file_not_deleted", file_id=str(record["_id"]), error=str(exc))
    delete_job_dir(root, body.id)
    delete_job_dir(state.settings.archive_root, body.id)
    gone = {"entity_id": body.id, "tenant": tenant}
    await db[Collections.FILES].delete_many({**gone, "_id": {"$nin": kept}} if kept else gone)
    await jobs.delete_job(db, KIND, tenant, loaded)
    state.live_stats.forget(MODULE, body.id)
    log.info("recording_removed", job_id=body.id, files=len(loaded["recordedFiles"]))
    return loaded


@router.post(
    "/removeFile",
    summary="Delete one recorded file; the job stays",
    responses=documented(409),
)
async def remove_file(state: State, principal: Operator, body: RemoveFileBody) -> dict[str, bool]:
    tenant = tenant_of(principal)
    db = state.db
    await jobs.load(db, KIND, tenant, body.record_id)
    record = await db[Collections.FILES].find_one(
        {"_id": ObjectId(body.file_id), "entity_id": body.record_id, "tenant": tenant}
    )
    if record is None or record.get("status") == "deleted":
        raise NotFound(f"file {body.file_id} not found in recording {body.record_id}",
                       field="file_id")  # fmt: skip
    if record.get("status") == "recording":
        raise Conflict(
            "this file is still being written; stop the recording (or wait for the segment to "
            "close) before removing it",
            field="file_id",
        )
    # Marked `deleted` first, and the object deleted by the key the marked record has: an
    # upload still running either wrote its key before the mark (deleted here) or sees the mark
    # and deletes what it put itself (docs/DECISIONS.md, "Object storage").
    marked = await db[Collections.FILES].find_one_and_update(
        {"_id": record["_id"], "status": record.get("status")},
        {"$set": {"status": "deleted", "deleted_at": utcnow(), "modified": utcnow()}},
        return_document=ReturnDocument.AFTER,
    )
    if marked is None:  # changed meanwhile (removed, or a segment still closing): as if gone
        raise NotFound(f"file {body.file_id} not found in recording {body.record_id}",
                       field="file_id")  # fmt: skip
    object_gone = await storage_targets.delete_object(state, marked)
    delete_file_record_from_disk(
        state.settings.storage_root, marked, archive_root=state.settings.archive_root
    )
    if object_gone:
        await db[Collections.FILES].delete_one({"_id": record["_id"]})
    # else the bucket refused or is away: the record stays `deleted`, and the janitor's purge
    # deletes the object, then the record
    log.info("recording_file_removed", job_id=body.record_id, file_id=body.file_id)
    await publish_event(state, tenant, body.record_id, "file_deleted", file=present_file(record))
    return {"success": True}


@router.post("/getStat", summary="Live FFmpeg progress of running recording jobs")
async def get_stat(
    state: State, principal: Principal, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> list[dict[str, Any]]:
    return jobs.stat_rows(state, KIND, tenant_of(principal))
