"""Entry point of the janitor service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.janitor.settings import JanitorSettings


async def serve(ctx: ServiceContext[JanitorSettings]) -> None:
    """Run until `ctx.stop` is set; the skeleton only announces readiness."""
    ctx.log.info("janitor_ready")


def main() -> None:
    run_service("janitor", JanitorSettings, serve)
