"""Entry point of the restreamer service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.restreamer.settings import RestreamerSettings


async def serve(ctx: ServiceContext[RestreamerSettings]) -> None:
    """Run until `ctx.stop` is set; the skeleton only announces readiness."""
    ctx.log.info("restreamer_ready")


def main() -> None:
    run_service("restreamer", RestreamerSettings, serve, capacity=lambda s: s.max_jobs)
