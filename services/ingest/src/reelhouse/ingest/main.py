"""Entry point of the ingest service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.ingest.node import IngestNode
from reelhouse.ingest.settings import IngestSettings


async def serve(ctx: ServiceContext[IngestSettings]) -> None:
    """Run the data plane and its servers until `ctx.stop` is set."""
    await IngestNode(ctx).run()


def main() -> None:
    run_service("ingest", IngestSettings, serve)
