"""Entry point of the restreamer service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.restreamer.node import RestreamerNode
from reelhouse.restreamer.settings import RestreamerSettings


async def serve(ctx: ServiceContext[RestreamerSettings]) -> None:
    """Claim and run restream jobs until `ctx.stop` is set, then stop FFmpeg gracefully."""
    ctx.log.info("restreamer_ready", max_jobs=ctx.settings.max_jobs, lease_s=ctx.settings.lease_s)
    await RestreamerNode(ctx).run()


def main() -> None:
    run_service("restreamer", RestreamerSettings, serve, capacity=lambda s: s.max_jobs)
