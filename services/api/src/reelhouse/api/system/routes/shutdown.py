"""``POST /api/system/shutdown`` (issue 22; the channel-recorder seed's "Graceful Shutdown
(Local-Only)"): finish every active recording cleanly, then end the stack.

Accepted only from loopback (the client address after the trusted-proxy rewrite, so a remote
caller behind a local reverse proxy is refused) and from an admin. It answers 202 at once; then:

1. ``<p>.sys.shutdown`` ``prepare``: probers start no new recording from here on;
2. every open channel recording ends (``end_reason: shutdown``; its job is stopped as a person's
   stop does), and the API waits, up to ``REELHOUSE_SHUTDOWN_WAIT_S``, until each one's job is
   released and its files are finished and processed (``ready`` or ``failed``);
3. the stack ends: under ``make up`` the supervisor itself (SIGTERM to the process in
   ``REELHOUSE_SUPERVISOR_PIDFILE``: it stops every program in order and exits); otherwise
   ``<p>.sys.shutdown`` ``exit`` stops every service (each exits 0; compose's ``restart:
   on-failure`` keeps them down) and the API ends itself.

Recording jobs of the job API (not channels) are not stopped: they end with their recorder
(SIGTERM: FFmpeg writes its trailer) and, being still active, go on at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from reelhouse.api.channels.routes.channels import _files, _recording_status
from reelhouse.api.deps import Admin, State
from reelhouse.api.errors import documented
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import SystemShutdown
from reelhouse.common.errors import Forbidden
from reelhouse.common.jobs import kinds
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.api.shutdown")

router = APIRouter(prefix="/api/system", tags=["system"])


def _loopback(host: str | None) -> bool:
    try:
        return bool(host) and ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def request_exit() -> None:
    """End this API process gracefully (uvicorn drains on SIGTERM and exits 0)."""
    os.kill(os.getpid(), signal.SIGTERM)


@router.post(
    "/shutdown",
    status_code=202,
    summary="Finish every active recording, then end the stack (loopback and admin only)",
    responses=documented(403, s403="FORBIDDEN: not an admin, or not from this machine"),
)
async def shutdown(request: Request, state: State, principal: Admin) -> dict[str, Any]:
    client = request.client.host if request.client else None
    if not _loopback(client):
        raise Forbidden("the shutdown is accepted only from this machine (loopback)")
    app = request.app
    open_recs = await state.db[Collections.CHANNEL_RECORDINGS].find(
        {"ended_at": None}, {"_id": 1}
    ).to_list(None)  # fmt: skip
    if getattr(app.state, "shutdown_task", None) is None:
        log.warning("system_shutdown_requested", by=principal.id, recordings=len(open_recs))
        app.state.shutdown_task = asyncio.create_task(_shut_down(app, state, principal.id))
    return {"success": True, "shutting_down": True,
            "recordings": [str(r["_id"]) for r in open_recs],
            "message": "finishing every active recording, then ending the stack"}  # fmt: skip


async def _order(state: AppState, phase: str, by: str) -> None:
    with contextlib.suppress(Exception):
        await state.bus.publish(state.bus.subjects.system_shutdown(),
                                SystemShutdown(phase=phase, by=by))  # type: ignore[arg-type]  # fmt: skip
        await state.bus.nc.flush(timeout=2)


async def _shut_down(app: FastAPI, state: AppState, by: str) -> None:
    try:
        await _order(state, "prepare", by)
        await _finish_recordings(state)
    except Exception as exc:  # the stack still ends
        log.error("shutdown_finish_failed", error=str(exc)[:300])
    pidfile = state.settings.supervisor_pidfile
    if pidfile is not None:
        try:
            pid = int(pidfile.read_text().strip())
            log.warning("system_shutdown_supervisor", pid=pid)
            os.kill(pid, signal.SIGTERM)  # it stops every program, this API too, and exits
            return
        except (OSError, ValueError) as exc:
            log.error("supervisor_not_signalled", pidfile=str(pidfile), error=str(exc)[:200])
    log.warning("system_shutdown_exit")
    await _order(state, "exit", by)
    getattr(app.state, "request_exit", request_exit)()


async def _finish_recordings(state: AppState) -> None:
    """End every open channel recording and wait until its files are finished and processed."""
    db, now = state.db, utcnow()
    recs = await db[Collections.CHANNEL_RECORDINGS].find({"ended_at": None}).to_list(None)
    for rec in recs:
        result = await db[Collections.CHANNEL_RECORDINGS].update_one(
            {"_id": rec["_id"], "ended_at": None},
            {"$set": {"ended_at": now, "end_reason": "shutdown", "modified": now}},
        )
        if result.modified_count:
            await kinds.set_active(db, state.bus, kinds.RECORDING, rec["job_id"], active=False)
    deadline = time.monotonic() + state.settings.shutdown_wait_s
    pending = list(recs)
    while pending and time.monotonic() < deadline:
        still = []
        for rec in pending:
            if ("recording", str(rec["job_id"])) in state.live.owners:
                still.append(rec)  # its recorder still runs the job
                continue
            fresh = await db[Collections.CHANNEL_RECORDINGS].find_one({"_id": rec["_id"]})
            files = await _files(db, fresh or rec)
            if _recording_status(fresh or rec, files) in ("recording", "processing"):
                still.append(rec)
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    log.info("shutdown_recordings_finished", finished=len(recs) - len(pending),
             unfinished=[str(r["_id"]) for r in pending])  # fmt: skip
