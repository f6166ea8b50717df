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
        description="Seconds between attempts to reopen a failed destination of a "
        "multi-destination job (the other destinations keep running): the cap of its own "
        "process's restart backoff, or tee's recovery period without an ingest service.",
    )
    destination_stale_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a destination's own FFmpeg may go without progress (a stalled "
        "receiver blocks its writes) before it alone is restarted.",
    )
    destination_send_buffer_bytes: int = Field(
        262144,
        ge=0,
        description="TCP send buffer of an RTMP destination's own FFmpeg, bytes (the kernel "
        "doubles it; 0: autotuned, up to ~4 MB). A stalled receiver is seen once it is full: "
        "512 KiB is ~1.7 s of a 2.5 Mbit/s stream and covers 10 Mbit/s at 200 ms RTT.",
    )
    destination_stop_grace_s: float = Field(
        2.0,
        gt=0,
        description="Seconds a destination's own FFmpeg gets to finish on stop before SIGKILL "
        "(a push has no trailer worth more; a stalled receiver would hold it for the whole "
        "grace).",
    )
