"""Settings of the recorder service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class RecorderSettings(CommonSettings):
    """Recorder: runs one supervised FFmpeg per claimed recording job."""

    max_jobs: int = Field(40, ge=1, description="Most recording jobs this node runs at once.")
    lease_s: float = Field(
        15.0, gt=0, description="Seconds a job lease lasts without renewal before failover."
    )
    reconcile_s: float = Field(
        2.0, gt=0, description="Seconds between looks for claimable jobs (NATS hints act at once)."
    )
    claim_delay_s: float = Field(
        0.5,
        ge=0,
        description="Extra wait before claiming on a hint at full load, seconds (scaled by load, "
        "so the least loaded node claims first).",
    )
    retry_initial_s: float = Field(
        1.0, gt=0, description="Seconds before the first reconnect after a source drop."
    )
    retry_max_s: float = Field(
        10.0, gt=0, description="Cap of the reconnect backoff (exponential, with jitter), seconds."
    )
    stale_timeout_s: float = Field(
        20.0, gt=0, description="Seconds without FFmpeg progress before it is restarted."
    )
    stop_grace_s: float = Field(
        10.0, gt=0, description="Seconds FFmpeg gets to write its trailer before SIGKILL."
    )
    progress_period_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between FFmpeg progress reports (the stats rate; each is parsed).",
    )
    ffmpeg_path: str = Field("ffmpeg", description="The ffmpeg binary (path or name on PATH).")
