"""Settings of the prober service (`REELHOUSE_` prefix)."""

from pydantic import Field, model_validator

from reelhouse.common.settings import CommonSettings


class ProberSettings(CommonSettings):
    """Prober: answers ffprobe requests over NATS and monitors started streams."""

    probe_timeout_s: float = Field(
        10.0, gt=0, le=60, description="Default ffprobe deadline, seconds."
    )
    probe_timeout_max_s: float = Field(
        30.0,
        gt=0,
        le=60,
        description="Cap of the deadline a caller may ask for, seconds.",
    )
    probe_concurrency: int = Field(4, ge=1, description="Most ffprobe processes at once.")
    probe_queue: int = Field(
        16,
        ge=0,
        description="Probe requests that may wait for a free ffprobe slot; beyond that the "
        "prober answers 503 with Retry-After.",
    )
    probe_cache_s: float = Field(
        3.0,
        ge=0,
        description="Seconds a probe result (or a refused source) is reused for the same URL "
        "(0: no cache).",
    )
    monitor_interval_s: float = Field(
        5.0, gt=0, description="Seconds between probes of a monitored (started) stream."
    )
    monitor_timeout_s: float = Field(
        8.0, gt=0, le=60, description="Deadline of a monitoring probe, seconds."
    )
    max_monitors: int = Field(50, ge=1, description="Most streams this node monitors at once.")
    monitor_reconcile_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between the prober's reconcile passes over started streams (hints "
        "and the live plane act at once; a dead prober's streams are taken over on its expiry).",
    )
    channel_interval_s: float = Field(
        30.0, gt=0, description="Seconds between live checks of a watched channel."
    )
    channel_grace_s: float = Field(
        60.0,
        ge=0,
        description="Seconds a recording channel may be offline before its recording ends (a "
        "broadcast back within them goes on in the same recording).",
    )
    channel_check_timeout_s: float = Field(
        20.0, gt=0, le=120, description="Deadline of one live check (streamlink), seconds."
    )
    channel_backoff_max_s: float = Field(
        300.0, gt=0, description="Cap of the jittered backoff after failed checks, seconds."
    )
    channel_reconcile_s: float = Field(
        10.0, gt=0, description="Seconds between the prober's reconcile passes over channels."
    )
    max_channels: int = Field(500, ge=1, description="Most channels this node watches at once.")
    ffprobe_path: str = Field("ffprobe", description="The ffprobe binary (path or name on PATH).")

    @model_validator(mode="after")
    def _default_within_cap(self) -> "ProberSettings":
        if self.probe_timeout_s > self.probe_timeout_max_s:
            raise ValueError("probe_timeout_s must not exceed probe_timeout_max_s")
        return self
