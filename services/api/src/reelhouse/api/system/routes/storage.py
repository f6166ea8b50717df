"""``/api/storage/*``: disk and per-job usage, running the janitor now (docs/ARCHITECTURE.md §5)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.common.contracts.storage import CleanupRequest, PassReport
from reelhouse.common.micro import call
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/storage", tags=["storage"])

CLEANUP_TIMEOUT_S = 30.0
"""How long ``cleanup`` waits for a janitor's pass."""


def _disk_usage(root: Path) -> dict[str, int]:
    """The storage root's filesystem (its nearest existing parent before the first recording)."""
    path = root.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return {"total": usage.total, "used": usage.used, "free": usage.free}


@router.post("/getInfo", summary="Disk space of the storage root and what each job uses")
async def get_info(
    state: State, principal: Principal, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> dict[str, Any]:
    tenant = tenant_of(principal)
    disk = await asyncio.to_thread(_disk_usage, state.settings.storage_root)
    usage: dict[str, dict[str, int]] = {}
    archive = {"files": 0, "bytes": 0}
    query = {"tenant": tenant, "status": {"$ne": "deleted"}}
    projection = {"entity_id": 1, "size_bytes": 1, "status": 1}
    async for doc in state.db[Collections.FILES].find(query, projection):
        size = int(doc.get("size_bytes") or 0)
        if doc.get("status") == "archived":
            archive["files"] += 1
            archive["bytes"] += size
            continue
        row = usage.setdefault(str(doc.get("entity_id")), {"files": 0, "bytes": 0})
        row["files"] += 1
        row["bytes"] += size
    per_job = []
    jobs = state.db[Collections.RECORDINGS].find({"tenant": tenant}, {"recording_name": 1})
    async for job in jobs.sort("created", 1):
        row = usage.get(str(job["_id"]), {"files": 0, "bytes": 0})
        per_job.append({"id": str(job["_id"]), "recording_name": job.get("recording_name"), **row})
    return {**disk, "per_job": per_job, "archive": archive}


@router.post("/cleanup", summary="Run the janitor now; what it removed", responses=documented(504))
async def cleanup(
    state: State, _principal: Operator, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> dict[str, Any]:
    data = await call(
        state.bus,
        state.bus.subjects.janitor_cleanup(),
        CleanupRequest(),
        timeout_s=CLEANUP_TIMEOUT_S,
        what="the janitor",
    )
    report = PassReport.model_validate_json(data)
    return {"success": True, **report.model_dump(mode="json")}
