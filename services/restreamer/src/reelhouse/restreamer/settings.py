"""Settings of the restreamer service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class RestreamerSettings(CommonSettings):
    """Restreamer: runs one supervised FFmpeg per claimed restream job."""

    max_jobs: int = Field(40, ge=1, description="Most restream jobs this node runs at once.")
    lease_s: float = Field(
        15.0, gt=0, description="Seconds a job lease lasts without renewal before failover."
    )
