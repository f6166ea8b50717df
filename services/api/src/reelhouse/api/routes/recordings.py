"""``/api/recording/*``: the Recordings module, shaped exactly as ``seeds/recordings-api.txt``.

The API writes desired state (``active``, config, ``generation``) and publishes a hint; recorders
reconcile (ARCHITECTURE §2). Responses are job objects with ``_id`` and ``id``, ``input`` as the
populated list, ``recordedFiles`` populated, ``created``/``modified`` and ``success: true``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.auth import Principal
from reelhouse.api.state import State
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.messages import DEFAULT_TENANT, JobCommand, JobEvent
from reelhouse.common.contracts.recording import (
    IdBody,
    ListBody,
    RecordingIn,
    RecordingUpdate,
    RemoveFileBody,
)
from reelhouse.common.errors import Conflict, NotFound
from reelhouse.common.files import delete_file_record_from_disk, delete_job_dir, present_file
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Verb

router = APIRouter(prefix="/api/recording", tags=["recordings"])
log = get_logger("reelhouse.api.recordings")

MODULE = "recording"
MODULE_NAME = "MODULE_RECORDINGS"

_JOB_FIELDS = (
    "recording_name", "recording_type", "input", "output_format", "recording_mode",
    "recording_mode_settings", "transcoding", "modify_audio", "modify_video", "overlay",
    "delete_after", "active",
)  # fmt: skip
_INPUT_HIDDEN = {"_id", "tenant", "entity_id", "created", "modified"}


def _tenant(_: str) -> str:
    return DEFAULT_TENANT  # one tenant until accounts exist (issue: auth)


def _present_input(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    out.update({k: v for k, v in doc.items() if k not in _INPUT_HIDDEN})
    return out


def _present_runtime(runtime: dict[str, Any] | None) -> dict[str, Any] | None:
    if not runtime:
        return None
    out = {}
    for key, value in runtime.items():
        out[key] = format_timestamp(value) if hasattr(value, "astimezone") else value
    return out


def _present(
    job: dict[str, Any], inputs: dict[ObjectId, dict[str, Any]], files: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": str(job["_id"]), "id": str(job["_id"])}
    for key in _JOB_FIELDS:
        if key == "input":
            out["input"] = [_present_input(inputs[i]) for i in job.get("input", []) if i in inputs]
        elif key in job:
            out[key] = job[key]
    out["recordedFiles"] = [present_file(f) for f in files]
    out["runtime"] = _present_runtime(job.get("runtime"))
    out["created"] = format_timestamp(job["created"])
    out["modified"] = format_timestamp(job["modified"])
    out["success"] = True
    return out


async def _populate(db: AsyncDatabase, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    input_ids = [i for job in jobs for i in job.get("input", [])]
    inputs = {}
    if input_ids:
        async for doc in db[Collections.INPUTS].find({"_id": {"$in": input_ids}}):
            inputs[doc["_id"]] = doc
    files: dict[str, list[dict[str, Any]]] = {str(job["_id"]): [] for job in jobs}
    if jobs:
        query = {"entity_id": {"$in": list(files)}, "status": {"$ne": "deleted"}}
        async for doc in db[Collections.FILES].find(query).sort("created", 1):
            files[doc["entity_id"]].append(doc)
    return [_present(job, inputs, files[str(job["_id"])]) for job in jobs]


async def _load(db: AsyncDatabase, tenant: str, job_id: str) -> dict[str, Any]:
    job = await db[Collections.RECORDINGS].find_one({"_id": ObjectId(job_id), "tenant": tenant})
    if job is None:
        raise NotFound(f"recording {job_id} not found", field="id")
    return job


async def _loaded(db: AsyncDatabase, tenant: str, job_id: str) -> dict[str, Any]:
    return (await _populate(db, [await _load(db, tenant, job_id)]))[0]


async def _hint(state: Any, verb: Verb, job_id: str) -> None:
    """Tell recorders at once; if NATS is away they reconcile on their timer anyway."""
    try:
        command = JobCommand(module=MODULE, verb=verb, job_id=job_id)
        await state.bus.publish(state.bus.subjects.command("recorder", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", job_id=job_id, verb=verb, error=str(exc))


async def _event(state: Any, tenant: str, job_id: str, event: Any, **fields: Any) -> None:
    try:
        message = JobEvent(type=event, module=MODULE, job_id=job_id, tenant=tenant, **fields)
        await state.bus.publish(state.bus.subjects.event(MODULE, job_id, event), message)
    except Exception as exc:
        log.warning("event_not_sent", job_id=job_id, event=event, error=str(exc))


def _input_doc(body: RecordingIn, tenant: str, job_id: ObjectId) -> dict[str, Any]:
    return {**body.input.model_dump(mode="json"), "tenant": tenant, "entity_id": str(job_id)}


@router.post("/create", summary="Create a recording job")
async def create(state: State, principal: Principal, body: RecordingIn) -> dict[str, Any]:
    tenant = _tenant(principal)
    db = state.db
    now = utcnow()
    job_id, input_id = ObjectId(), ObjectId()
    await db[Collections.INPUTS].insert_one(
        {"_id": input_id, **_input_doc(body, tenant, job_id), "created": now, "modified": now}
    )
    job = {
        "_id": job_id,
        "tenant": tenant,
        **body.config(),
        "input": [input_id],
        "generation": 0,
        "created": now,
        "modified": now,
    }
    try:
        await db[Collections.RECORDINGS].insert_one(job)
    except BaseException:
        await db[Collections.INPUTS].delete_one({"_id": input_id})
        raise
    log.info("recording_created", job_id=str(job_id), active=body.active)
    if body.active:
        await _hint(state, "start", str(job_id))
    return await _loaded(db, tenant, str(job_id))


@router.post("/getCount", summary="How many recording jobs there are")
async def get_count(
    state: State, principal: Principal, body: Annotated[ListBody | None, Body()] = None
) -> dict[str, int]:
    query = _list_query(_tenant(principal), body or ListBody())
    return {"count": await state.db[Collections.RECORDINGS].count_documents(query)}


def _list_query(tenant: str, body: ListBody) -> dict[str, Any]:
    query: dict[str, Any] = {"tenant": tenant}
    for key, value in body.filter.items():
        if key in ("id", "_id"):
            query["_id"] = ObjectId(value) if ObjectId.is_valid(str(value)) else None
        else:
            query[key] = value
    return query


@router.post("/getAll", summary="Recording jobs, populated")
async def get_all(
    state: State, principal: Principal, body: Annotated[ListBody | None, Body()] = None
) -> list[dict[str, Any]]:
    body = body or ListBody()
    query = _list_query(_tenant(principal), body)
    sort = [("_id" if k == "id" else k, v) for k, v in body.sort.items()] or [("created", 1)]
    cursor = state.db[Collections.RECORDINGS].find(query).sort(sort).skip(body.skip)
    if body.limit:
        cursor = cursor.limit(body.limit)
    return await _populate(state.db, await cursor.to_list(None))


@router.post("/getById", summary="One recording job, populated")
async def get_by_id(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    return await _loaded(state.db, _tenant(principal), body.id)


@router.post("/update", summary="Change a recording job; a running job restarts with it")
async def update(state: State, principal: Principal, body: RecordingUpdate) -> dict[str, Any]:
    tenant = _tenant(principal)
    db = state.db
    job = await _load(db, tenant, body.id)
    now = utcnow()
    config = body.config()
    config.pop("id", None)
    input_ids = job.get("input", [])
    if input_ids:
        await db[Collections.INPUTS].update_one(
            {"_id": input_ids[0]},
            {"$set": {**_input_doc(body, tenant, job["_id"]), "modified": now}},
        )
    else:
        input_ids = [ObjectId()]
        await db[Collections.INPUTS].insert_one(
            {"_id": input_ids[0], **_input_doc(body, tenant, job["_id"]), "created": now,
             "modified": now}
        )  # fmt: skip
    await db[Collections.RECORDINGS].update_one(
        {"_id": job["_id"], "tenant": tenant},
        {"$set": {**config, "input": input_ids, "modified": now}, "$inc": {"generation": 1}},
    )
    log.info("recording_updated", job_id=body.id, active=body.active)
    await _hint(state, "reload" if body.active else "stop", body.id)
    if not body.active:
        state.live_stats.forget(MODULE, body.id)
    return await _loaded(db, tenant, body.id)


@router.post("/start", summary="Mark active and (re)start the recording worker")
async def start(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    tenant = _tenant(principal)
    await _load(state.db, tenant, body.id)
    await state.db[Collections.RECORDINGS].update_one(
        {"_id": ObjectId(body.id), "tenant": tenant},
        {"$set": {"active": True, "modified": utcnow()}, "$inc": {"generation": 1}},
    )
    log.info("recording_start_requested", job_id=body.id)
    await _hint(state, "start", body.id)
    return await _loaded(state.db, tenant, body.id)


@router.post("/stop", summary="Mark inactive and stop the recording worker")
async def stop(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    tenant = _tenant(principal)
    await _load(state.db, tenant, body.id)
    await state.db[Collections.RECORDINGS].update_one(
        {"_id": ObjectId(body.id), "tenant": tenant},
        {"$set": {"active": False, "modified": utcnow()}},
    )
    log.info("recording_stop_requested", job_id=body.id)
    await _hint(state, "stop", body.id)
    state.live_stats.forget(MODULE, body.id)
    return await _loaded(state.db, tenant, body.id)


async def _wait_released(db: AsyncDatabase, job_id: ObjectId, timeout_s: float) -> bool:
    """Wait until no worker holds the job (runtime gone or its lease expired)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = await db[Collections.RECORDINGS].find_one({"_id": job_id}, {"runtime": 1})
        runtime = (job or {}).get("runtime")
        if not runtime or runtime.get("lease_until", utcnow()) < utcnow():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


@router.delete("/remove", summary="Stop, then delete the job, its input, its files")
async def remove(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    tenant = _tenant(principal)
    db = state.db
    loaded = await _loaded(db, tenant, body.id)
    job_id = ObjectId(body.id)
    await db[Collections.RECORDINGS].update_one(
        {"_id": job_id}, {"$set": {"active": False, "modified": utcnow()}}
    )
    await _hint(state, "stop", body.id)
    if not await _wait_released(db, job_id, state.settings.stop_wait_s):
        log.warning("recording_remove_worker_still_holds", job_id=body.id)
    root = state.settings.storage_root
    async for record in db[Collections.FILES].find({"entity_id": body.id, "tenant": tenant}):
        try:
            delete_file_record_from_disk(root, record)
        except Exception as exc:
            log.warning("file_not_deleted", file_id=str(record["_id"]), error=str(exc))
    delete_job_dir(root, body.id)
    await db[Collections.FILES].delete_many({"entity_id": body.id, "tenant": tenant})
    input_ids = [ObjectId(i["_id"]) for i in loaded["input"]]
    if input_ids:
        await db[Collections.INPUTS].delete_many({"_id": {"$in": input_ids}})
    await db[Collections.RECORDINGS].delete_one({"_id": job_id, "tenant": tenant})
    state.live_stats.forget(MODULE, body.id)
    log.info("recording_removed", job_id=body.id, files=len(loaded["recordedFiles"]))
    return loaded


@router.post("/removeFile", summary="Delete one recorded file; the job stays")
async def remove_file(state: State, principal: Principal, body: RemoveFileBody) -> dict[str, bool]:
    tenant = _tenant(principal)
    db = state.db
    await _load(db, tenant, body.record_id)
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
    delete_file_record_from_disk(state.settings.storage_root, record)
    await db[Collections.FILES].delete_one({"_id": record["_id"]})
    log.info("recording_file_removed", job_id=body.record_id, file_id=body.file_id)
    await _event(state, tenant, body.record_id, "file_deleted", file=present_file(record))
    return {"success": True}


@router.post("/getStat", summary="Live FFmpeg progress of running recording jobs")
async def get_stat(
    state: State, principal: Principal, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> list[dict[str, Any]]:
    rows = state.live_stats.current(MODULE, tenant=_tenant(principal))
    return [{"processData": row.processData.model_dump(mode="json")} for row in rows]
