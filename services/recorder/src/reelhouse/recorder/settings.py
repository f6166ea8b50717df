"""Settings of the recorder service (`REELHOUSE_` prefix)."""

from reelhouse.common.settings import WorkerSettings


class RecorderSettings(WorkerSettings):
    """Recorder: runs one supervised FFmpeg per claimed recording job."""
