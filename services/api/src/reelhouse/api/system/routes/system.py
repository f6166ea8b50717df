"""``/api/system``: operator views of the deployment (admin role).

- ``getLogs``: the warning-and-above log records every service ships into the ``logs``
  collection (:func:`reelhouse.common.logging.ship_logs`); the API keeps the collection within
  ``logs_max_count`` records and ``logs_max_age_s`` (:func:`run_log_trimmer`).
- ``getDependencies``: FFmpeg's and ffprobe's versions and what this FFmpeg can do (protocols,
  encoders, decoders), read once and cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pymongo import DESCENDING

from reelhouse.api.deps import Admin, Ops, State, SystemAdmin
from reelhouse.api.system.schemas import DependenciesQuery, LogsQuery
from reelhouse.api.system.tools import run_tool
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.logging import LEVEL_NUMBERS, LOGS_COLLECTION, get_logger

log = get_logger("reelhouse.api.system")

router = APIRouter(prefix="/api/system", tags=["system"])


# -- logs ------------------------------------------------------------------------------------


@router.post("/getLogs", summary="Warning-and-above logs of every service, newest first")
async def get_logs(
    state: State, _: SystemAdmin, query: Annotated[LogsQuery | None, Body()] = None
) -> list[dict[str, Any]]:
    """Shipped log records (``level``, ``from``, ``to``, ``limit``, ``service``, ``node``)."""
    query = query or LogsQuery()
    mongo: dict[str, Any] = {"level_no": {"$gte": LEVEL_NUMBERS[query.level]}}
    if query.from_ or query.to:
        mongo["ts"] = {}
        if query.from_:
            mongo["ts"]["$gte"] = query.from_
        if query.to:
            mongo["ts"]["$lt"] = query.to
    if query.service:
        mongo["service"] = query.service
    if query.node:
        mongo["node"] = query.node
    cursor = state.db[LOGS_COLLECTION].find(mongo).sort("ts", DESCENDING).limit(query.limit)
    rows = []
    async for doc in cursor:
        rows.append(
            {
                "timestamp": format_timestamp(doc["ts"]),
                "level": doc.get("level"),
                "event": doc.get("event"),
                "service": doc.get("service"),
                "node": doc.get("node"),
                "component": doc.get("component"),
                "fields": doc.get("fields") or {},
            }
        )
    return rows


async def trim_logs(db: Any, *, max_count: int, max_age_s: float) -> int:
    """Delete records older than ``max_age_s`` and the oldest beyond ``max_count``."""
    coll = db[LOGS_COLLECTION]
    result = await coll.delete_many({"ts": {"$lt": utcnow() - timedelta(seconds=max_age_s)}})
    deleted = result.deleted_count
    if await coll.count_documents({}) > max_count:
        cursor = coll.find({}, {"ts": 1}).sort("ts", DESCENDING).skip(max_count).limit(1)
        edge = [doc async for doc in cursor]
        if edge:
            result = await coll.delete_many({"ts": {"$lte": edge[0]["ts"]}})
            deleted += result.deleted_count
    return deleted


async def run_log_trimmer(state: Any, stop: asyncio.Event, every_s: float = 30.0) -> None:
    """Lifespan task: keep ``logs`` within its caps (FerretDB has no capped collections)."""
    with contextlib.suppress(Exception):
        await state.db[LOGS_COLLECTION].create_index([("ts", DESCENDING)])
    while not stop.is_set():
        try:
            await trim_logs(
                state.db,
                max_count=state.settings.logs_max_count,
                max_age_s=state.settings.logs_max_age_s,
            )
        except Exception as exc:
            log.debug("logs_trim_failed", error=str(exc).splitlines()[0][:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


# -- dependencies ----------------------------------------------------------------------------


def parse_protocols(text: str) -> dict[str, list[str]]:
    """``ffmpeg -protocols`` → ``{"input": [...], "output": [...]}``."""
    out: dict[str, list[str]] = {"input": [], "output": []}
    section: str | None = None
    for line in text.splitlines():
        head = line.strip().rstrip(":").lower()
        if head in out:
            section = head
        elif section and line.startswith(" ") and line.strip():
            out[section].append(line.strip())
    return out


_CODEC_LINE = re.compile(r"^\s*([VASD.][A-Z.]{5})\s+(\S+)\s+(.*)$")
_KINDS = {"V": "video", "A": "audio", "S": "subtitle", "D": "data"}


def parse_codecs(text: str) -> list[dict[str, str]]:
    """``ffmpeg -encoders`` / ``-decoders`` → ``[{name, type, description}]``."""
    rows, started = [], False
    for line in text.splitlines():
        if line.strip().startswith("------"):
            started = True
            continue
        match = _CODEC_LINE.match(line) if started else None
        if match:
            flags, name, description = match.groups()
            rows.append(
                {"name": name, "type": _KINDS.get(flags[0], "other"), "description": description}
            )
    return rows


def _version(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    lines = text.splitlines()
    first = lines[0].split()
    config = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("configuration:")), ""
    )
    libs = {}
    for ln in lines:
        match = re.match(r"^\s*(lib\w+)\s+(\d+\.\s*\d+\.\s*\d+)", ln)
        if match:
            libs[match.group(1)] = match.group(2).replace(" ", "")
    return {
        "version": first[2] if len(first) >= 3 and first[1] == "version" else lines[0],
        "banner": lines[0],
        "configuration": config.split() if config else [],
        "libraries": libs,
    }


async def read_dependencies(ffmpeg: str = "ffmpeg", ffprobe: str = "ffprobe") -> dict[str, Any]:
    """Versions and capabilities of the FFmpeg tools on this API's host."""
    ff_version, probe_version, protocols, encoders, decoders = await asyncio.gather(
        run_tool(ffmpeg, "-version"),
        run_tool(ffprobe, "-version"),
        run_tool(ffmpeg, "-protocols"),
        run_tool(ffmpeg, "-encoders"),
        run_tool(ffmpeg, "-decoders"),
    )
    ffmpeg_info = _version(ff_version)
    if ffmpeg_info is not None:
        ffmpeg_info["path"] = shutil.which(ffmpeg)
        ffmpeg_info["protocols"] = parse_protocols(protocols or "")
        ffmpeg_info["encoders"] = parse_codecs(encoders or "")
        ffmpeg_info["decoders"] = parse_codecs(decoders or "")
    probe_info = _version(probe_version)
    if probe_info is not None:
        probe_info["path"] = shutil.which(ffprobe)
    return {"ffmpeg": ffmpeg_info, "ffprobe": probe_info, "checked": format_timestamp(utcnow())}


@router.post("/getDependencies", summary="FFmpeg/ffprobe versions, protocols, encoders, decoders")
async def get_dependencies(
    ops: Ops, _: Admin, query: Annotated[DependenciesQuery | None, Body()] = None
) -> dict[str, Any]:
    """What this host's FFmpeg can do (a missing tool is ``null``); read once, then cached."""
    async with ops.dependencies_lock:
        if ops.dependencies is None or (query and query.refresh) or not ops.dependencies["ffmpeg"]:
            ops.dependencies = await read_dependencies()
    return {"success": True, **ops.dependencies}
