"""Settings of the restreamer service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import WorkerSettings


class RestreamerSettings(WorkerSettings):
    """Restreamer: runs one supervised FFmpeg per claimed restream job."""

    auth_retry_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between retries of a destination that rejected the stream key "
        "(not hammered like other failures).",
    )
    destination_retry_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between FFmpeg's attempts to reopen a failed destination of a "
        "multi-destination job (the other destinations keep running).",
    )
