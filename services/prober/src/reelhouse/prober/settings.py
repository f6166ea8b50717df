"""Settings of the prober service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class ProberSettings(CommonSettings):
    """Prober: answers ffprobe requests over NATS and monitors started streams."""

    probe_timeout_s: float = Field(
        10.0, gt=0, le=60, description="Default ffprobe deadline, seconds."
    )
    probe_concurrency: int = Field(4, ge=1, description="Most ffprobe processes at once.")
