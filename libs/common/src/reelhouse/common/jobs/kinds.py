"""Desired-state changes of a job kind that services other than the API make (issue 22).

The API's routes change jobs through ``reelhouse.api.jobs.service``; the prober starts and stops
a channel's recording job through :func:`set_active` here, so no service writes a job document
by hand. A channel's job is always a seamless, unsplit recording whose one input is replaced
before each broadcast (:func:`set_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Module, Service

log = get_logger("reelhouse.common.jobs.kinds")


@dataclass(frozen=True)
class Kind:
    """A job kind as a service outside the API changes it."""

    module: Module
    service: Service
    collection: str
    input_collection: str


RECORDING = Kind("recording", "recorder", Collections.RECORDINGS, Collections.INPUTS)


def channel_job_config(channel: dict[str, Any]) -> dict[str, Any]:
    """The recording job's configuration for a channel document (its input comes apart)."""
    return {
        "recording_name": f"channel {channel['name']}"[:128],
        "recording_type": "RECORDING_STREAM_TO_FILE",
        "output_format": channel.get("output_format", "mp4"),
        "recording_mode": "RECORDING_MODE_INFINITY",
        "recording_mode_settings": {"hours": 0, "minutes": 0, "seconds": 0},
        "transcoding": {}, "modify_audio": {}, "modify_video": {}, "overlay": {},
        "delete_after": int(channel.get("delete_after", 0)),
        "max_files": 0, "max_bytes": 0, "seamless": True, "seamless_reconnect_s": 0,
        "max_bytes_total": int(channel.get("quota_bytes", 0)),
        "schedule": None,
        "channel_id": str(channel["_id"]),
    }  # fmt: skip


def channel_input(url: str, quality: str = "best", platform: str = "url") -> dict[str, Any]:
    """The input block of a channel's recording job: streamlink reads the channel's URL (it
    resolves it again at each FFmpeg start, so an expired platform URL is renewed) and feeds
    the recorder's FFmpeg through a pipe; ``platform`` names the tenant's stored credentials
    streamlink presents (``reelhouse.common.credentials``)."""
    return {
        "input_type": "INPUT_TYPE_HLS_URL", "application": "IO_APPLICATION_STREAMLINK",
        "input_stream_url": url, "input_stream_listen_port": {},
        "input_settings": {"quality": quality, "platform": platform},
        "input_module_id": "", "input_stream_id": "",
        "entity_name": "", "module_name": "",
    }  # fmt: skip


async def hint(bus: Bus, kind: Kind, verb: str, job_id: str) -> None:
    """Tell the kind's workers at once; they reconcile on their timer if this is lost."""
    try:
        command = JobCommand(module=kind.module, verb=verb, job_id=job_id)  # type: ignore[arg-type]
        await bus.publish(bus.subjects.command(kind.service, verb), command)  # type: ignore[arg-type]
    except Exception as exc:
        log.warning("hint_not_sent", job_id=job_id, verb=verb, error=str(exc))


async def set_input(db: AsyncDatabase, kind: Kind, job_id: str, block: dict[str, Any]) -> None:
    """Replace the job's (first) input document with ``block`` (applies at its next start)."""
    job = await db[kind.collection].find_one({"_id": ObjectId(job_id)}, {"input": 1})
    if job is None or not job.get("input"):
        raise LookupError(f"{kind.module} {job_id} has no input")
    await db[kind.input_collection].update_one(
        {"_id": job["input"][0]}, {"$set": {**block, "modified": utcnow()}}
    )


async def set_active(
    db: AsyncDatabase, bus: Bus, kind: Kind, job_id: str, *, active: bool
) -> int | None:
    """Start (``active``, a new ``generation``: a new session) or stop the job, then hint.
    Returns the job's generation after the change (None: the job is gone)."""
    change: dict[str, Any] = {"$set": {"active": active, "paused": False, "modified": utcnow()}}
    if active:
        change["$inc"] = {"generation": 1}
    # update, then read (the local FerretDB's findAndModify takes no projection)
    result = await db[kind.collection].update_one({"_id": ObjectId(job_id)}, change)
    doc = await db[kind.collection].find_one({"_id": ObjectId(job_id)}, {"generation": 1})
    if not result.matched_count or doc is None:
        return None
    await hint(bus, kind, "start" if active else "stop", job_id)
    return int(doc.get("generation", 0))
