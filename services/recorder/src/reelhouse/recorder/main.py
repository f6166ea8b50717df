"""Entry point of the recorder service: settings → connect → serve → drain."""

from reelhouse.common.service import ServiceContext, run_service
from reelhouse.recorder.node import RecorderNode
from reelhouse.recorder.settings import RecorderSettings


async def serve(ctx: ServiceContext[RecorderSettings]) -> None:
    """Claim and run recording jobs until `ctx.stop` is set, then stop FFmpeg gracefully."""
    ctx.log.info("recorder_ready", max_jobs=ctx.settings.max_jobs, lease_s=ctx.settings.lease_s)
    await RecorderNode(ctx).run()


def main() -> None:
    run_service("recorder", RecorderSettings, serve, capacity=lambda s: s.max_jobs)
