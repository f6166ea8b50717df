"""Entry point of the janitor service: settings → connect → serve → drain.

A pass runs every ``interval_s``; ``<p>.req.janitor.cleanup`` (queue group ``janitor``) runs one
at once and answers with its :class:`PassReport`. A failed pass (MongoDB away) is logged and the
loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.msg import Msg
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from reelhouse.common.errors import Unavailable
from reelhouse.common.service import ServiceContext, run_service
from reelhouse.janitor.retention import Janitor
from reelhouse.janitor.settings import JanitorSettings
from reelhouse.janitor.uploads import Uploader


def make_janitor(ctx: ServiceContext[JanitorSettings]) -> Janitor:
    s = ctx.settings
    return Janitor(
        db=ctx.db,
        storage_root=s.storage_root,
        node_id=ctx.node_id,
        bus=ctx.bus,
        deleted_grace_s=s.deleted_grace_s,
        orphan_grace_s=s.orphan_grace_s,
        remove_orphans=s.remove_orphans,
        disk_warning_pct=s.disk_warning_pct,
        disk_critical_pct=s.disk_critical_pct,
        evict_when_critical=s.evict_when_critical,
        settings=s,
    )


async def serve(ctx: ServiceContext[JanitorSettings]) -> None:
    """Run passes until `ctx.stop` is set; answer cleanup requests meanwhile."""
    janitor = make_janitor(ctx)

    async def on_cleanup(msg: Msg) -> None:
        try:
            report = await janitor.run_pass()
        except Exception as exc:
            ctx.log.warning("janitor_pass_failed", error=str(exc).splitlines()[0][:200])
            error = Unavailable(f"the janitor pass failed: {str(exc).splitlines()[0][:200]}")
            body = json.dumps(error.to_body()["error"]).encode()
            headers = {ERROR_CODE_HEADER: str(error.status), ERROR_HEADER: error.message}
            with contextlib.suppress(Exception):
                await ctx.bus.nc.publish(msg.reply, body, headers=headers)
            return
        with contextlib.suppress(Exception):
            await msg.respond(report.model_dump_json().encode())

    while not await ctx.bus.wait_connected(timeout=1.0):
        if ctx.stop.is_set():
            return
    sub = await ctx.bus.nc.subscribe(
        ctx.bus.subjects.janitor_cleanup(), queue="janitor", cb=on_cleanup
    )
    ctx.log.info("janitor_ready", interval_s=ctx.settings.interval_s)
    uploads = None
    if ctx.settings.upload_enabled:  # issue 24: files of jobs with a storage_id
        uploader = Uploader(
            db=ctx.db,
            bus=ctx.bus,
            live=ctx.live,
            settings=ctx.settings,
            node_id=ctx.node_id,
            storage_root=ctx.settings.storage_root,
        )
        uploads = asyncio.create_task(uploader.run(ctx.stop), name="uploads")
    try:
        while not ctx.stop.is_set():
            try:
                await janitor.run_pass()
            except Exception as exc:
                ctx.log.warning("janitor_pass_failed", error=str(exc).splitlines()[0][:200])
            if await ctx.wait_stopped(ctx.settings.interval_s):
                break
    finally:
        if uploads is not None:
            await asyncio.gather(uploads, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def main() -> None:
    run_service("janitor", JanitorSettings, serve)
