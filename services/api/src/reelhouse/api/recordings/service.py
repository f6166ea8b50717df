"""The Recordings module's behaviour: its job kind, jobs as responses show them (files
populated), pause and resume, its events. What restreams share with it is in
:mod:`reelhouse.api.jobs.service`; the routes are in :mod:`reelhouse.api.recordings.routes`.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.jobs import service as jobs
from reelhouse.api.jobs.service import JobKind
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.errors import Conflict
from reelhouse.common.events import build_event
from reelhouse.common.files import present_file
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections, find_each

log = get_logger("reelhouse.api.recordings")

MODULE = "recording"

_JOB_FIELDS = (
    "recording_name", "recording_type", "input", "output_format", "recording_mode",
    "recording_mode_settings", "transcoding", "modify_audio", "modify_video", "overlay",
    "delete_after", "max_files", "max_bytes", "seamless", "active", "paused",
    "seamless_reconnect_s", "max_bytes_total", "quota_exceeded_at", "schedule",
    "schedule_next_start", "schedule_next_stop",
    "storage_id", "keep_local", "local_grace_hours", "archive_storage_id", "archive_storage_class",
)  # fmt: skip
KIND = JobKind(
    module=MODULE,
    service="recorder",
    collection=Collections.RECORDINGS,
    fields=_JOB_FIELDS,
    links={"input": Collections.INPUTS},
    writes_files=lambda output_types: True,  # every active recording writes its files
)


async def populate(
    db: AsyncDatabase, found: list[dict[str, Any]], live: Any = None
) -> list[dict[str, Any]]:
    linked = await jobs.fetch_linked(db, KIND, found)
    files: dict[str, list[dict[str, Any]]] = {str(job["_id"]): [] for job in found}
    # Each job's files by top-level equality (mongo.find_each), sorted here.
    for doc in sorted(await find_each(db[Collections.FILES], "entity_id", files),
                      key=lambda d: (d["created"], d["_id"])):  # fmt: skip
        if doc.get("status") != "deleted":
            files[doc["entity_id"]].append(doc)
    return [
        jobs.present_job(
            KIND,
            job,
            linked,
            live=live,
            recordedFiles=[present_file(f) for f in files[str(job["_id"])]],
        )
        for job in found
    ]


async def load_populated(
    db: AsyncDatabase, tenant: str, job_id: str, live: Any = None
) -> dict[str, Any]:
    return (await populate(db, [await jobs.load(db, KIND, tenant, job_id)], live))[0]


async def publish_event(state: Any, tenant: str, job_id: str, event: Any, **fields: Any) -> None:
    try:
        message = build_event(event, module=MODULE, job_id=job_id, tenant=tenant, **fields)
        await state.bus.publish(state.bus.subjects.event(MODULE, job_id, event), message)
    except Exception as exc:
        log.warning("event_not_sent", job_id=job_id, event=event, error=str(exc))


async def set_paused(state: AppState, tenant: str, job_id: str, *, paused: bool) -> bool:
    """pause (close the current part, stay active but idle) or resume (a new part, same
    session: ``generation`` is unchanged). Only an active job; False when already so."""
    job = await jobs.load(state.db, KIND, tenant, job_id)
    if not job.get("active"):
        verb = "pause" if paused else "resume"
        raise Conflict(f"the job is stopped; only an active job can {verb} (use start)",
                       field="id")  # fmt: skip
    if bool(job.get("paused")) == paused:
        return False
    if not paused:  # a resumed recording writes again
        await jobs.check_disk(state, KIND, job_id)
    now = utcnow()
    result = await state.db[KIND.collection].update_one(
        {"_id": job["_id"], "tenant": tenant, "active": True, "paused": {"$ne": paused}},
        {"$set": {"paused": paused, "paused_at" if paused else "resumed_at": now,
                  "modified": now}},
    )  # fmt: skip
    if result.matched_count == 0:
        return False  # stopped or changed meanwhile
    jobs.log.info(f"{MODULE}_{'pause' if paused else 'resume'}_requested", job_id=job_id)
    await jobs.hint(state, KIND, "stop" if paused else "start", job_id)
    if paused:
        state.live_stats.forget(MODULE, job_id)
    return True
