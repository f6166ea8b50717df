"""Settings of the recorder service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class RecorderSettings(CommonSettings):
    """Recorder: runs one supervised FFmpeg per claimed recording job."""

    max_jobs: int = Field(40, ge=1, description="Most recording jobs this node runs at once.")
    lease_s: float = Field(
        15.0, gt=0, description="Seconds a job lease lasts without renewal before failover."
    )
