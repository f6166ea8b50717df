"""Entry point of the recorder service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.recorder.settings import RecorderSettings


async def serve(ctx: ServiceContext[RecorderSettings]) -> None:
    """Run until `ctx.stop` is set; the skeleton only announces readiness."""
    ctx.log.info("recorder_ready")


def main() -> None:
    run_service("recorder", RecorderSettings, serve, capacity=lambda s: s.max_jobs)
