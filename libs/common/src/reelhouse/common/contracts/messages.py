"""NATS payloads: command hints, live stats and job events (docs/ARCHITECTURE.md §3).

Each carries ``type`` and ``version`` and ignores unknown fields (``BusMessage``). Decode at the
edge with ``Model.model_validate_json``; publish with ``Bus.publish``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from reelhouse.common.contracts.base import BusMessage, Timestamp, utcnow
from reelhouse.common.subjects import Event, Module, Verb

DEFAULT_TENANT = "default"
"""The tenant of everything the bootstrap admin creates (until accounts exist)."""


class JobCommand(BusMessage):
    """A hint to workers: a job's desired state changed; reconcile it now (MongoDB is the truth)."""

    type: Literal["job_command"] = "job_command"
    module: Module
    verb: Verb
    job_id: str


class ProcessData(BaseModel):
    """The getStat ``processData`` fields, FFmpeg's values as printed (``out_time_ms`` verbatim)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    frame: str | None = None
    fps: str | None = None
    bitrate: str = "N/A"
    bitrate_kbits: int = 0
    total_size: str = "N/A"
    out_time_ms: str = "N/A"
    speed: str = "N/A"
    progress: str = "continue"


DestinationStatus = Literal["starting", "sending", "down", "retrying"]
FailureKind = Literal[
    "connection_refused", "timeout", "auth_rejected", "not_found", "disk_full", "protocol_error",
    "stalled", "unknown",
]  # fmt: skip


class DestinationState(BaseModel):
    """Where one destination of a restream is: what the operator sees per output."""

    model_config = ConfigDict(extra="ignore")

    index: int
    """Position in the job's ``output`` list."""
    output_id: str | None = None
    output_type: str
    target: str
    """Where it goes, with any stream key masked (``rtmp://host/app/****``)."""
    state: DestinationStatus
    failure: FailureKind | None = None
    message: str | None = None
    """FFmpeg's own words about the last failure."""
    since: Timestamp = Field(default_factory=utcnow)
    retries: int = 0
    # A destination with its own FFmpeg (a multi-destination job split through the ingest
    # relay): that process and its own progress. None under tee or with one destination.
    pid: int | None = None
    """The destination's own FFmpeg."""
    fps: str | None = None
    bitrate: str | None = None
    """What this destination's FFmpeg sends, as FFmpeg prints it (``"2281.0kbits/s"``)."""
    bitrate_kbits: int | None = None
    total_size: str | None = None


class JobStats(BusMessage):
    """Progress of one running job, about once a second on ``<p>.stats.<module>.<job_id>``."""

    type: Literal["job_stats"] = "job_stats"
    module: Module
    job_id: str
    tenant: str
    node: str
    state: str
    timestamp: Timestamp = Field(default_factory=utcnow)
    processData: ProcessData
    restarts: int | None = None
    """FFmpeg restarts of this run so far (the live plane's runtime view; ``None`` from older
    workers)."""
    pid: int | None = None
    destinations: list[DestinationState] | None = None
    """Restreams: the state of each destination."""


class JobEvent(BusMessage):
    """One event of one job on ``<p>.evt.<module>.<job_id>.<event>``; ``type`` is the event name."""

    type: Event  # type: ignore[assignment]
    module: Module
    job_id: str
    tenant: str
    node: str | None = None
    timestamp: Timestamp = Field(default_factory=utcnow)
    state: str | None = None
    reason: str | None = None
    restarts: int | None = None
    delay_s: float | None = None
    file: dict[str, Any] | None = None
    """For file events: the file record as the API shows it."""
    progress_pct: float | None = None
    """For ``processing_progress``: how much of the media FFmpeg has copied (0-100)."""
    channel_id: str | None = None
    """The channel whose job this is (issue 22), on every event of a channel's job."""


class DiskWarning(BusMessage):
    """The storage disk entered a watermark level, on ``<p>.evt.storage.disk_warning``.

    Published by the janitor once per level change (``warning`` or ``critical``; a return to
    ``ok`` is only logged). No job: ``job_id`` is absent.
    """

    subject: ClassVar[str] = "<p>.evt.storage.disk_warning"
    type: Literal["disk_warning"] = "disk_warning"
    node: str
    level: Literal["warning", "critical"]
    """The watermark level the disk entered."""
    used_pct: float
    """How full the disk is (0-100)."""
    warning_pct: float
    """The warning watermark (percent used)."""
    critical_pct: float
    """The critical watermark (percent used)."""
    total_bytes: int
    """The disk's size."""
    free_bytes: int
    """What is left on it."""
    reason: str
    """The level in words, for the logs and the dashboard."""
    timestamp: Timestamp = Field(default_factory=utcnow)


class ConfigReloaded(BusMessage):
    """Runtime settings changed (version ``version``); on ``<p>.evt.system.config_reloaded``."""

    subject: ClassVar[str] = "<p>.evt.system.config_reloaded"
    type: Literal["config_reloaded"] = "config_reloaded"
    version: int
    """The runtime settings' version (in place of the message format's)."""
    changed: list[str] = Field(default_factory=list)
    """The settings that changed."""
    node: str | None = None
    timestamp: Timestamp = Field(default_factory=utcnow)


class SystemShutdown(BusMessage):
    """The stack's graceful shutdown, on ``<p>.sys.shutdown`` (``POST /api/system/shutdown``).

    ``prepare``: start no new recording (probers do not start a channel's recording). ``exit``:
    every service stops as on SIGTERM and exits 0 (under compose, ``restart: on-failure`` keeps
    it down)."""

    type: Literal["system_shutdown"] = "system_shutdown"
    phase: Literal["prepare", "exit"]
    by: str = ""
    """Who asked (a user or key id), for the logs."""


class CredentialsChanged(BusMessage):
    """An account's credentials changed, on ``<p>.auth.changed`` (not an event: not stored).

    Published by the API replica that bumped a user's token version (logout, password or role
    change, removal, refresh-token reuse) or removed an API key. Every API replica drops its
    cached facts of that user and every cached API-key lookup (a key's role depends on its
    creator's), so the old credentials are refused on the next request anywhere.
    """

    type: Literal["credentials_changed"] = "credentials_changed"
    user_id: str | None = None
    key_id: str | None = None
    reason: str
    node: str | None = None
    timestamp: Timestamp = Field(default_factory=utcnow)


class RefreshReuse(BusMessage):
    """A refresh token that had already been rotated was presented again, on
    ``<p>.evt.auth.auth_refresh_reuse``. The whole chain it belongs to (its successor
    included) was revoked and the user's access tokens with it: one of the two holders of that
    token is not the user."""

    subject: ClassVar[str] = "<p>.evt.auth.auth_refresh_reuse"
    type: Literal["auth_refresh_reuse"] = "auth_refresh_reuse"
    tenant: str
    user_id: str
    family: str
    """The refresh-token chain (one login) that was revoked."""
    revoked: int
    """Refresh tokens of the chain deleted (the successor included)."""
    client: str | None = None
    """Address of the caller that presented the reused token (after trusted proxies)."""
    node: str | None = None
    timestamp: Timestamp = Field(default_factory=utcnow)
