"""Entry point of the prober service: settings → connect → serve → drain."""

import asyncio
import contextlib

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.prober.channels import ChannelNode
from reelhouse.prober.monitor import MonitorNode
from reelhouse.prober.probes import ProbeEngine, ProbeService
from reelhouse.prober.settings import ProberSettings


async def serve(ctx: ServiceContext[ProberSettings]) -> None:
    """Answer probe requests, monitor started streams and watch channels until `ctx.stop`."""
    engine = ProbeEngine(ctx.settings, node_id=ctx.node_id)
    monitors = MonitorNode(ctx, engine)
    channels = ChannelNode(ctx)
    service = ProbeService(bus=ctx.bus, engine=engine, log=ctx.log, extra_stats=monitors.stats)
    while not await ctx.bus.wait_connected(timeout=1.0):
        if ctx.stop.is_set():
            return
    await service.start()
    checks = await channels.serve_checks()
    ctx.log.info(
        "prober_ready",
        concurrency=ctx.settings.probe_concurrency,
        queue=ctx.settings.probe_queue,
        max_monitors=ctx.settings.max_monitors,
    )
    try:
        await asyncio.gather(monitors.run(), channels.run())
    finally:
        with contextlib.suppress(Exception):
            await checks.unsubscribe()
        await service.stop()


def main() -> None:
    run_service("prober", ProberSettings, serve, capacity=lambda s: s.max_monitors)
