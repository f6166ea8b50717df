"""Entry point of the prober service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.prober.settings import ProberSettings


async def serve(ctx: ServiceContext[ProberSettings]) -> None:
    """Run until `ctx.stop` is set; the skeleton only announces readiness."""
    ctx.log.info("prober_ready")


def main() -> None:
    run_service("prober", ProberSettings, serve)
