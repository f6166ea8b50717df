"""Settings of the API service (`REELHOUSE_` prefix)."""

from pathlib import Path

from pydantic import Field, SecretStr

from reelhouse.common.settings import CommonSettings


class ApiSettings(CommonSettings):
    """HTTP API: where it listens and how the first operator gets in."""

    api_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port the HTTP API listens on.")
    bootstrap_token: SecretStr | None = Field(
        None,
        description="Admin token accepted in `x-access-token`. Unset: one is generated and "
        "written to REELHOUSE_BOOTSTRAP_TOKEN_FILE.",
    )
    bootstrap_token_file: Path = Field(
        Path("data/bootstrap-token"),
        description="Where a generated bootstrap token is kept (mode 0600).",
    )
    health_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Deadline of each dependency check in /api/health, seconds."
    )
    stop_wait_s: float = Field(
        20.0,
        gt=0,
        le=300,
        description="How long `remove` waits for the worker to let go of a job, seconds.",
    )
    stats_ttl_s: float = Field(
        5.0, gt=0, le=60, description="Seconds a job's last stats stay in getStat."
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
