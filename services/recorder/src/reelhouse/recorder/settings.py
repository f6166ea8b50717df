"""Settings of the recorder service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import WorkerSettings


class RecorderSettings(WorkerSettings):
    """Recorder: runs one supervised FFmpeg per claimed recording job."""

    thumbnails: bool = Field(
        True,
        description="Keep a live JPEG of each recording for the dashboard (decodes the source's "
        "keyframes: about 1 % of a core per 1080p30 copy recording). Off for the densest nodes.",
    )
