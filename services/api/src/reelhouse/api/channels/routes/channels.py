"""Channels (issue 22, ``seeds/channel-recorder-api.txt``): ``/api/channels`` and the recordings
of channels, ``/api/recordings`` (one per broadcast), in REST form (the seed names operations,
not paths: docs/DECISIONS.md "Channels").

A channel owns one recording job, made with the channel and removed with it; the prober starts
and stops that job with the channel's broadcasts. A recording is one session of that job: its
files are the job's files of that session.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from bson import ObjectId
from fastapi import APIRouter, Query
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.files import routes as file_routes
from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings import service as recordings
from reelhouse.api.recordings.service import KIND as RECORDING
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import ObjectIdStr, format_timestamp, utcnow
from reelhouse.common.contracts.channels import (
    ChannelCheck,
    ChannelIn,
    ChannelStatus,
    LiveInfo,
    Platform,
)
from reelhouse.common.contracts.media import InputIn
from reelhouse.common.contracts.recording_files import FileRef
from reelhouse.common.errors import (
    Conflict,
    NotFound,
    ReelhouseError,
    Unavailable,
)
from reelhouse.common.files import delete_file_record_from_disk, delete_job_dir, present_file
from reelhouse.common.jobs import kinds
from reelhouse.common.logging import get_logger
from reelhouse.common.micro import call
from reelhouse.common.mongo import Collections
from reelhouse.common.netpolicy import validate_url

log = get_logger("reelhouse.api.channels")

router = APIRouter(prefix="/api", tags=["channels"])


class Unprocessable(ReelhouseError):
    """The request is well formed but cannot be done for this object (422)."""

    code = "VALIDATION_ERROR"
    status = 422


_CHANNEL_FIELDS = tuple(ChannelIn.model_fields)
_READ_ONLY = ("status", "last_checked", "last_live", "last_error")


def _ts(value: Any) -> Any:
    return format_timestamp(value) if isinstance(value, datetime) else value


def _present_channel(doc: dict[str, Any], live: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    for key in _CHANNEL_FIELDS:
        out[key] = doc.get(key)
    if out.get("schedule"):
        out["schedule"] = {k: _ts(v) for k, v in out["schedule"].items()}
    status = doc.get("status") or ("offline" if doc.get("enabled") else "disabled")
    if not doc.get("enabled"):
        status = "disabled"
    out.update(status=status, last_checked=_ts(doc.get("last_checked")),
               last_live=_ts(doc.get("last_live")), last_error=doc.get("last_error"),
               job_id=str(doc["job_id"]), created=_ts(doc["created"]),
               modified=_ts(doc["modified"]), success=True)  # fmt: skip
    if live and doc.get("enabled"):
        out["status"] = live.get("status", status)
        out["last_checked"] = live.get("checked_at", out["last_checked"])
        out["live"] = {k: live.get(k) for k in ("live", "title", "category", "started_at")}
    return out


async def _live(state: AppState, channel_id: str) -> dict[str, Any] | None:
    try:
        return await state.live.read_progress("channel", channel_id)
    except Exception:
        return None


async def _load(db: AsyncDatabase, tenant: str, channel_id: str) -> dict[str, Any]:
    doc = None
    if ObjectId.is_valid(channel_id):
        doc = await db[Collections.CHANNELS].find_one({"_id": ObjectId(channel_id),
                                                       "tenant": tenant})  # fmt: skip
    if doc is None:
        raise NotFound(f"channel {channel_id} not found", field="id")
    return doc


async def _check_url(state: AppState, body: ChannelIn) -> None:
    url = body.source_url()
    await validate_url(state.settings.net_policy(), url, role="input", field="url")


def _stored(body: ChannelIn) -> dict[str, Any]:
    data = body.model_dump(mode="json")
    data["schedule"] = body.schedule.model_dump() if body.schedule else None
    data["active"] = body.enabled  # what the prober's lease loop claims by
    return data


# -- channels --------------------------------------------------------------------------------


@router.get("/channels", summary="List channels")
async def list_channels(
    state: State,
    principal: Principal,
    platform: Platform | None = None,
    status: ChannelStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    query: dict[str, Any] = {"tenant": tenant_of(principal)}
    if platform:
        query["platform"] = platform
    found = await state.db[Collections.CHANNELS].find(query).sort("created", 1).to_list(None)
    rows = [_present_channel(d, await _live(state, str(d["_id"]))) for d in found]
    if status:
        rows = [r for r in rows if r["status"] == status]
    return {"channels": rows[offset : offset + limit], "total": len(rows), "limit": limit,
            "offset": offset, "success": True}  # fmt: skip


@router.get("/channels/{channel_id}", summary="One channel")
async def get_channel(state: State, principal: Principal, channel_id: str) -> dict[str, Any]:
    doc = await _load(state.db, tenant_of(principal), channel_id)
    return _present_channel(doc, await _live(state, channel_id))


@router.post("/channels", summary="Add a channel (and its recording job)")
async def add_channel(state: State, principal: Operator, body: ChannelIn) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await _check_url(state, body)
    db, now, channel_id = state.db, utcnow(), ObjectId()
    doc = {"_id": channel_id, "tenant": tenant, **_stored(body),
           "status": "offline" if body.enabled else "disabled", "generation": 0,
           "created": now, "modified": now}  # fmt: skip
    config = kinds.channel_job_config(doc)
    # Streamlink reads the channel's URL and feeds FFmpeg (the prober sets it again at each
    # broadcast's start, with the channel's quality then).
    source = InputIn.model_validate(
        kinds.channel_input(body.source_url(), body.quality, body.platform)
    )
    job_id = ObjectId(await jobs.create_job(state, RECORDING, tenant, config, {"input": [source]}))
    doc["job_id"] = job_id
    await db[Collections.CHANNELS].insert_one(doc)
    log.info("channel_added", channel_id=str(channel_id), platform=body.platform)
    if body.enabled:
        await kinds.hint(state.bus, _CHANNEL_KIND, "start", str(channel_id))
    return _present_channel(doc)


_CHANNEL_KIND = kinds.Kind("channel", "prober", Collections.CHANNELS, Collections.INPUTS)


@router.put("/channels/{channel_id}", summary="Update a channel")
async def update_channel(
    state: State, principal: Operator, channel_id: str, body: ChannelIn
) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await _load(state.db, tenant, channel_id)
    await _check_url(state, body)
    now = utcnow()
    fields = {**_stored(body), "modified": now}
    if not body.enabled:
        fields["status"] = "disabled"
    await state.db[Collections.CHANNELS].update_one(
        {"_id": doc["_id"]}, {"$set": fields, "$inc": {"generation": 1}}
    )
    job = kinds.channel_job_config({**doc, **fields})
    job.pop("schedule")
    # Applies from the next broadcast (a recording in progress keeps its format).
    await state.db[Collections.RECORDINGS].update_one({"_id": doc["job_id"]}, {"$set": job})
    await kinds.hint(state.bus, _CHANNEL_KIND, "reload" if body.enabled else "stop", channel_id)
    return _present_channel(await _load(state.db, tenant, channel_id))


@router.delete("/channels/{channel_id}", summary="Delete a channel, its recordings and files")
async def delete_channel(state: State, principal: Operator, channel_id: str) -> dict[str, Any]:
    tenant = tenant_of(principal)
    db = state.db
    doc = await _load(db, tenant, channel_id)
    await db[Collections.CHANNELS].update_one({"_id": doc["_id"]}, {"$set": {"active": False}})
    await kinds.hint(state.bus, _CHANNEL_KIND, "stop", channel_id)
    job_id = str(doc["job_id"])
    job = await db[Collections.RECORDINGS].find_one({"_id": doc["job_id"]})
    if job is not None:
        await jobs.stop_and_wait(state, RECORDING, job_id)
        root = state.settings.storage_root
        async for record in db[Collections.FILES].find({"entity_id": job_id, "tenant": tenant}):
            try:
                delete_file_record_from_disk(root, record, archive_root=state.settings.archive_root)
            except Exception as exc:
                log.warning("file_not_deleted", file_id=str(record["_id"]), error=str(exc))
        delete_job_dir(root, job_id)
        await db[Collections.FILES].delete_many({"entity_id": job_id, "tenant": tenant})
        await jobs.delete_job(db, RECORDING, tenant, {"_id": job_id, "input": [
            {"_id": str(i)} for i in job.get("input", [])]})  # fmt: skip
    await db[Collections.CHANNEL_RECORDINGS].delete_many({"channel_id": channel_id})
    await db[Collections.CHANNELS].delete_one({"_id": doc["_id"]})
    log.info("channel_deleted", channel_id=channel_id)
    return {"success": True, "id": channel_id}


@router.post(
    "/channels/{channel_id}/check",
    summary="Check the channel's live status now",
    responses=documented(422, 503, 504, s422="the channel is disabled"),
)
async def check_channel(state: State, principal: Operator, channel_id: str) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await _load(state.db, tenant, channel_id)
    if not doc.get("enabled"):
        raise Unprocessable("the channel is disabled; enable it to check it", field="enabled")
    if state.live.kv is not None and ("channel", channel_id) not in state.live.owners:
        # Nobody would answer: say so now rather than after the request's whole deadline.
        raise Unavailable(
            "no prober watches this channel yet (it is claimed within seconds of being "
            "enabled, if a prober runs); try again shortly",
            headers={"Retry-After": "2"},
        )
    data = await call(state.bus, state.bus.subjects.channel_check(),
                      ChannelCheck(channel_id=channel_id, tenant=tenant),
                      timeout_s=state.settings.probe_timeout_s * 3, what="the prober")  # fmt: skip
    info = LiveInfo.model_validate_json(data)
    return {**info.model_dump(mode="json", include={"live", "title", "category", "started_at",
                                                     "status", "checked_at", "error"}),
            "success": True}  # fmt: skip


@router.post(
    "/channels/{channel_id}/stop",
    summary="Stop the current recording, skip the rest",
    responses=documented(422, s422="the channel is not recording"),
)
async def stop_channel(state: State, principal: Operator, channel_id: str) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await _load(state.db, tenant, channel_id)
    rec = await state.db[Collections.CHANNEL_RECORDINGS].find_one(
        {"channel_id": channel_id, "tenant": tenant, "ended_at": None}
    )
    if rec is None:
        raise Unprocessable("the channel is not recording", field="id")
    return await _stop_recording(state, rec)


@router.get("/channels/{channel_id}/profile", summary="The channel with its recording totals")
async def channel_profile(state: State, principal: Principal, channel_id: str) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await _load(state.db, tenant, channel_id)
    recs = (
        await state.db[Collections.CHANNEL_RECORDINGS]
        .find({"channel_id": channel_id, "tenant": tenant}, {"started_at": 1})
        .to_list(None)
    )
    size = 0
    async for f in state.db[Collections.FILES].find({"entity_id": str(doc["job_id"])},
                                                    {"size_bytes": 1, "status": 1}):  # fmt: skip
        if f.get("status") != "deleted":
            size += int(f.get("size_bytes") or 0)
    return {**_present_channel(doc, await _live(state, channel_id)), "recordings": len(recs),
            "used_bytes": size, "images": {k: bool(doc.get("images", {}).get(k))
                                           for k in ("profile", "banner")}}  # fmt: skip


@router.post("/channels/{channel_id}/images/fetch", summary="Fetch the platform's images",
             responses=documented(422, s422="the platform has no images"))  # fmt: skip
async def fetch_images(state: State, principal: Operator, channel_id: str) -> dict[str, Any]:
    doc = await _load(state.db, tenant_of(principal), channel_id)
    if doc.get("platform") == "url":
        raise Unprocessable("the url platform has no channel images", field="platform")
    raise Unprocessable(
        f"fetching {doc.get('platform')} images is not implemented yet (issue 22)",
        field="platform",
    )


@router.get("/channels/{channel_id}/images/{which}", summary="The channel's profile or banner")
async def get_image(
    state: State, principal: Principal, channel_id: str, which: Literal["profile", "banner"]
) -> dict[str, Any]:
    await _load(state.db, tenant_of(principal), channel_id)
    raise NotFound(f"the channel has no {which} image", field="which")


# -- recordings of channels ------------------------------------------------------------------


async def _files(db: AsyncDatabase, rec: dict[str, Any]) -> list[dict[str, Any]]:
    if rec.get("session") is None:
        return []
    found = await db[Collections.FILES].find({"entity_id": rec["job_id"]}).to_list(None)
    mine = [f for f in found if f.get("session") == rec["session"] and f.get("status") != "deleted"]
    return sorted(mine, key=lambda f: (f["created"], f["_id"]))


def _recording_status(rec: dict[str, Any], files: list[dict[str, Any]]) -> str:
    if rec.get("ended_at") is None:
        return "recording"
    statuses = {f.get("status") for f in files}
    for status in ("recording", "processing", "failed"):
        if status in statuses:
            return status
    if not files:
        return "stopped" if rec.get("end_reason") == "stopped" else "failed"
    return "ready"


async def _present_recording(db: AsyncDatabase, rec: dict[str, Any]) -> dict[str, Any]:
    files = await _files(db, rec)
    start, end = rec["started_at"], rec.get("ended_at")
    duration_ms = sum(int(f.get("duration_ms") or 0) for f in files)
    if not duration_ms:  # no file closed yet: the broadcast's time so far
        duration_ms = int(((end or utcnow()) - start).total_seconds() * 1000)
    return {
        "_id": str(rec["_id"]), "id": str(rec["_id"]), "channel": rec["channel_id"],
        "channel_name": rec.get("channel_name"), "platform": rec.get("platform"),
        "title": rec.get("title"), "category": rec.get("category"),
        "chapters": [{**c, "at": _ts(c["at"])} for c in rec.get("chapters", [])],
        "started_at": _ts(start), "ended_at": _ts(end), "end_reason": rec.get("end_reason"),
        "duration": round(duration_ms / 1000, 3), "size": sum(int(f.get("size_bytes") or 0)
                                                             for f in files),
        "status": _recording_status(rec, files), "paused": bool(rec.get("paused")),
        "job_id": rec["job_id"], "session": rec.get("session"),
        "files": [present_file(f) for f in files], "success": True,
    }  # fmt: skip


def _utc(value: datetime | None) -> datetime | None:
    """A query time as an aware UTC time (one without an offset is UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("/recordings", summary="Recordings of channels (one per broadcast)")
async def list_recordings(
    state: State,
    principal: Principal,
    channel: ObjectIdStr | None = None,
    platform: Platform | None = None,
    status: str | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="ISO 8601")] = None,
    to: Annotated[datetime | None, Query(description="ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    query: dict[str, Any] = {"tenant": tenant_of(principal)}
    if channel:
        query["channel_id"] = channel
    if platform:
        query["platform"] = platform
    since, until = _utc(from_), _utc(to)
    found = await state.db[Collections.CHANNEL_RECORDINGS].find(query).sort(
        "started_at", -1).to_list(None)  # fmt: skip
    found = [r for r in found if (since is None or r["started_at"] >= since)
             and (until is None or r["started_at"] <= until)]  # fmt: skip
    rows = [await _present_recording(state.db, r) for r in found]
    if status:
        rows = [r for r in rows if r["status"] == status]
    return {"recordings": rows[offset : offset + limit], "total": len(rows), "limit": limit,
            "offset": offset, "success": True}  # fmt: skip


@router.get("/recordings/active", summary="Recordings in progress")
async def active_recordings(state: State, principal: Principal) -> dict[str, Any]:
    found = (
        await state.db[Collections.CHANNEL_RECORDINGS]
        .find({"tenant": tenant_of(principal), "ended_at": None})
        .to_list(None)
    )
    return {"recordings": [await _present_recording(state.db, r) for r in found],
            "success": True}  # fmt: skip


async def _load_recording(state: AppState, principal: Any, rec_id: str,
                          *, active: bool = False) -> dict[str, Any]:  # fmt: skip
    rec = None
    if ObjectId.is_valid(rec_id):
        rec = await state.db[Collections.CHANNEL_RECORDINGS].find_one(
            {"_id": ObjectId(rec_id), "tenant": tenant_of(principal)}
        )
    if rec is None or (active and rec.get("ended_at") is not None):
        raise NotFound(f"{'active ' if active else ''}recording {rec_id} not found", field="id")
    return rec


async def _stop_recording(state: AppState, rec: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    result = await state.db[Collections.CHANNEL_RECORDINGS].update_one(
        {"_id": rec["_id"], "ended_at": None},
        {"$set": {"ended_at": now, "end_reason": "stopped", "modified": now}},
    )
    if result.modified_count:
        await kinds.set_active(state.db, state.bus, kinds.RECORDING, rec["job_id"], active=False)
        log.info("channel_recording_stopped", recording_id=str(rec["_id"]))
    rec = await state.db[Collections.CHANNEL_RECORDINGS].find_one({"_id": rec["_id"]})
    assert rec is not None
    return await _present_recording(state.db, rec)


@router.post("/recordings/active/{rec_id}/stop", summary="End this broadcast's recording")
async def stop_active(state: State, principal: Operator, rec_id: str) -> dict[str, Any]:
    return await _stop_recording(state, await _load_recording(state, principal, rec_id,
                                                              active=True))  # fmt: skip


async def _set_paused(
    state: AppState, principal: Any, rec_id: str, *, paused: bool
) -> dict[str, Any]:
    """Pause or resume an active broadcast's recording (its job), and say so."""
    rec = await _load_recording(state, principal, rec_id, active=True)
    if await recordings.set_paused(state, rec["tenant"], rec["job_id"], paused=paused):
        await state.db[Collections.CHANNEL_RECORDINGS].update_one(
            {"_id": rec["_id"]}, {"$set": {"paused": paused}}
        )
        event = "job_paused" if paused else "job_resumed"
        await recordings.publish_event(state, rec["tenant"], rec["job_id"], event,
                                      channel_id=rec["channel_id"])  # fmt: skip
    return await _present_recording(state.db, await _load_recording(state, principal, rec_id))


@router.post("/recordings/active/{rec_id}/pause", summary="Pause (close the current part)",
             responses=documented(409))  # fmt: skip
async def pause_active(state: State, principal: Operator, rec_id: str) -> dict[str, Any]:
    return await _set_paused(state, principal, rec_id, paused=True)


@router.post("/recordings/active/{rec_id}/resume", summary="Resume (a new part, same recording)",
             responses=documented(409))  # fmt: skip
async def resume_active(state: State, principal: Operator, rec_id: str) -> dict[str, Any]:
    return await _set_paused(state, principal, rec_id, paused=False)


@router.get("/recordings/{rec_id}", summary="One recording of a channel")
async def get_recording(state: State, principal: Principal, rec_id: str) -> dict[str, Any]:
    return await _present_recording(state.db, await _load_recording(state, principal, rec_id))


@router.delete("/recordings/{rec_id}", summary="Delete a recording (and its files)",
               responses=documented(409))  # fmt: skip
async def delete_recording(
    state: State, principal: Operator, rec_id: str, delete_file: bool = True
) -> dict[str, Any]:
    rec = await _load_recording(state, principal, rec_id)
    if rec.get("ended_at") is None:
        raise Conflict("the recording is in progress; stop it first", field="id")
    files = await _files(state.db, rec)
    for record in files:
        if delete_file:
            delete_file_record_from_disk(state.settings.storage_root, record,
                                         archive_root=state.settings.archive_root)  # fmt: skip
            await state.db[Collections.FILES].delete_one({"_id": record["_id"]})
    await state.db[Collections.CHANNEL_RECORDINGS].delete_one({"_id": rec["_id"]})
    return {"success": True, "id": rec_id, "files_deleted": len(files) if delete_file else 0}


@router.post("/recordings/{rec_id}/reprocess", summary="Process the recording's files again",
             responses=documented(409))  # fmt: skip
async def reprocess_recording(state: State, principal: Operator, rec_id: str) -> dict[str, Any]:
    rec = await _load_recording(state, principal, rec_id)
    done = []
    for record in await _files(state.db, rec):
        ref = FileRef(record_id=rec["job_id"], file_id=str(record["_id"]))
        done.append(await file_routes.reprocess_file(state, principal, ref))
    return {**await _present_recording(state.db, rec), "reprocessing": done}
