"""Entry point of the prober service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.prober.monitor import MonitorNode
from reelhouse.prober.probes import ProbeEngine, ProbeService
from reelhouse.prober.settings import ProberSettings


async def serve(ctx: ServiceContext[ProberSettings]) -> None:
    """Answer probe requests and monitor started streams until `ctx.stop` is set."""
    engine = ProbeEngine(ctx.settings, node_id=ctx.node_id)
    monitors = MonitorNode(ctx, engine)
    service = ProbeService(bus=ctx.bus, engine=engine, log=ctx.log, extra_stats=monitors.stats)
    while not await ctx.bus.wait_connected(timeout=1.0):
        if ctx.stop.is_set():
            return
    await service.start()
    ctx.log.info(
        "prober_ready",
        concurrency=ctx.settings.probe_concurrency,
        queue=ctx.settings.probe_queue,
        max_monitors=ctx.settings.max_monitors,
    )
    try:
        await monitors.run()
    finally:
        await service.stop()


def main() -> None:
    run_service("prober", ProberSettings, serve, capacity=lambda s: s.max_monitors)
