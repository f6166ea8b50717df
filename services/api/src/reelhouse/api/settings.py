"""Settings of the API service (`REELHOUSE_` prefix)."""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from reelhouse.common.settings import IngestCommonSettings


class ApiSettings(IngestCommonSettings):
    """HTTP API: where it listens and how the first operator gets in."""

    api_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port the HTTP API listens on.")
    bootstrap_token: SecretStr | None = Field(
        None,
        description="Admin token accepted in `x-access-token`. Unset: one is generated and "
        "written to REELHOUSE_BOOTSTRAP_TOKEN_FILE.",
    )
    supervisor_pidfile: Path | None = Field(
        None,
        description="Pid file of the supervisor that runs the stack (`make up` sets it): "
        "`POST /api/system/shutdown` ends the stack by signalling it. Unset: the shutdown tells "
        "every service to exit 0 over NATS.",
    )
    shutdown_wait_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="How long `POST /api/system/shutdown` waits for active recordings to be "
        "finished and processed before it ends the stack anyway, seconds.",
    )
    health_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Deadline of each dependency check in /api/health, seconds."
    )
    live_ready_wait_s: float = Field(
        5.0,
        ge=0,
        description="Seconds the API waits at start for the live plane (NATS key-value) before it "
        "serves anyway (getStat and the fleet view fill in once NATS answers).",
    )
    stop_wait_s: float = Field(
        20.0,
        gt=0,
        le=300,
        description="How long `remove` waits for the worker to let go of a job, seconds.",
    )
    probe_timeout_s: float = Field(
        10.0,
        gt=0,
        le=60,
        description="Default getStreamInfo deadline, seconds (the API waits one second more).",
    )
    download_secret: SecretStr | None = Field(
        None,
        description="HMAC key that signs download URLs. Unset: one is generated and kept in "
        "`download-secret` next to REELHOUSE_BOOTSTRAP_TOKEN_FILE (mode 0600).",
    )
    download_url_ttl_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Seconds a signed download URL stays valid."
    )
    archive_root: Path = Field(
        Path("data/archive"), description="Where `archiveFile` moves recorded files."
    )
    playback_max_range_s: int = Field(
        6 * 3600,
        ge=1,
        le=7 * 24 * 3600,
        description="Longest range `getPlaybackUrl` serves as one file or playlist, seconds.",
    )
    playback_max_streams: int = Field(
        8,
        ge=1,
        le=256,
        description="Playback files (mp4/ts) this API replica produces at once, each one FFmpeg; "
        "one more is a 503 with Retry-After.",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="HMAC key that signs access JWTs (32+ characters). Unset: one is generated "
        "and kept in `jwt-secret` next to REELHOUSE_BOOTSTRAP_TOKEN_FILE (mode 0600).",
    )
    access_token_ttl_s: int = Field(
        900, ge=30, le=24 * 3600, description="Seconds an access JWT from login stays valid."
    )
    refresh_token_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        le=365 * 24 * 3600,
        description="Seconds a refresh token stays valid (logout revokes it sooner).",
    )
    auth_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description="Seconds a replica reuses a user's token version or an API key's lookup "
        "without asking the database (0: ask on every request). Revocations reach every replica "
        "over NATS at once; this bounds staleness only while NATS is unreachable.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips; `*` "
        "trusts everyone). Empty: forwarded headers are ignored and the peer address counts.",
    )
    rate_limit_auth: str = Field(
        "10/minute",
        description="Limit of /api/auth/* calls per client address (`limits` notation).",
    )
    rate_limit_read: str = Field(
        "100/minute",
        description="Limit of read calls (GET, get*) per user or API key (`limits` notation).",
    )
    rate_limit_write: str = Field(
        "30/minute", description="Limit of write calls per user or API key (`limits` notation)."
    )
    rate_limit_enabled: bool = Field(
        True, description="Count calls and answer 429 past the limits (false: no limits)."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted, bytes (else 413)."
    )
    # -- events, webhooks, operator endpoints (issue 7) --
    events_max_age_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds events stay in the JetStream events stream (what a reconnecting "
        "WebSocket client or webhook delivery can still get).",
    )
    webhook_max_attempts: int = Field(
        6, ge=1, le=50, description="Delivery attempts per webhook event before it is given up."
    )
    webhook_retry_initial_s: float = Field(
        2.0, gt=0, description="Seconds before the first retry of a failed delivery (doubling)."
    )
    webhook_retry_max_s: float = Field(
        300.0, gt=0, description="Cap of the delivery retry backoff, seconds."
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Deadline of one delivery POST, seconds."
    )
    webhook_poll_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between looks for deliveries that are due."
    )
    logs_max_count: int = Field(
        100_000, ge=100, description="Most records kept in the `logs` collection (oldest go)."
    )
    logs_max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds a shipped log record is kept."
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token GET /metrics requires. Unset: /metrics needs no token (keep "
        "the API port private or set one).",
    )

    @field_validator("rate_limit_auth", "rate_limit_read", "rate_limit_write")
    @classmethod
    def _limit_notation(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '100/minute': {exc}") from None
        return value
