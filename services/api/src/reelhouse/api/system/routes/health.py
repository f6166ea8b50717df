"""``GET /api/health``: is every dependency up? No auth, so probes and load balancers can use it."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from reelhouse.api.deps import State
from reelhouse.api.system.tools import tool_version
from reelhouse.common.errors import error_body
from reelhouse.common.mongo import server_version

router = APIRouter(tags=["system"])


async def _check(name: str, coro: Any, timeout: float) -> dict[str, Any]:
    try:
        version = await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        return {"status": "down", "error": f"{name} did not answer within {timeout:g} s"}
    except Exception as exc:
        return {"status": "down", "error": (str(exc) or type(exc).__name__).splitlines()[0][:300]}
    return {"status": "up", "version": version}


async def _tool(state: Any, binary: str) -> str:
    version = state.tool_versions.get(binary)
    if version is None:  # not found at start: look again, it may have been installed since
        version = await tool_version(binary)
        state.tool_versions[binary] = version
    if version is None:
        raise RuntimeError(f"{binary} not found on PATH")
    return version


def _storage(state: Any) -> dict[str, Any]:
    root = state.settings.storage_root
    try:
        root.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(root)
    except OSError as exc:
        return {"status": "down", "path": str(root), "error": str(exc)}
    if not os.access(root, os.W_OK):
        return {"status": "down", "path": str(root), "error": "storage root is not writable"}
    return {
        "status": "up",
        "path": str(root.resolve()),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
    }


@router.get("/api/health", summary="Health of the API and everything it depends on")
async def health(state: State) -> JSONResponse:
    """200 when NATS, MongoDB, FFmpeg, ffprobe and storage are up; else 503 naming what is down."""
    t = state.settings.health_timeout_s

    async def nats() -> str:
        if not state.bus.connected:
            raise RuntimeError("not connected to NATS")
        return await state.bus.server_version(timeout=t)

    names = ["nats", "mongo", "ffmpeg", "ffprobe"]
    results = await asyncio.gather(
        _check("nats", nats(), t),
        _check("mongo", server_version(state.db), t),
        _check("ffmpeg", _tool(state, "ffmpeg"), t + 3),
        _check("ffprobe", _tool(state, "ffprobe"), t + 3),
    )
    checks: dict[str, Any] = dict(zip(names, results, strict=True))
    checks["storage"] = _storage(state)
    down = [name for name, c in checks.items() if c["status"] != "up"]
    if down:
        body = error_body("UNAVAILABLE", f"down: {', '.join(down)}", down=down)
        body["checks"] = checks
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"success": True, "status": "ok", "checks": checks})
