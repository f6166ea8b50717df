"""Settings of the janitor service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class JanitorSettings(CommonSettings):
    """Janitor: retention, purges, orphans, disk watermarks."""

    interval_s: float = Field(60.0, gt=0, description="Seconds between janitor passes.")
    deleted_grace_s: float = Field(
        3600.0, ge=0, description="Seconds a soft-deleted file record waits before it is purged."
    )
    orphan_grace_s: float = Field(
        3600.0,
        ge=0,
        description="Seconds an unrecorded file under a job's folder must be old to be an orphan.",
    )
    remove_orphans: bool = Field(
        False, description="Delete orphan files (otherwise they are only reported)."
    )
    evict_when_critical: bool = Field(
        False,
        description="At the critical disk level, delete the oldest ready/failed recorded files "
        "(never a job's newest ready one) until the disk is below it.",
    )

    # -- uploads to storage targets (issue 24; reelhouse.janitor.uploads) ---------------------
    upload_enabled: bool = Field(
        True, description="Upload the files of jobs with a storage_id (this janitor node)."
    )
    upload_repair_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between the uploader's repair passes (the backlog query, and one "
        "job's file records read whole, in turn). New files wake it by their file_ready events.",
    )
    upload_rate_s: float = Field(
        5.0, gt=0, description="Seconds between refreshes of the upload rate gauge while sending."
    )
    upload_concurrency: int = Field(
        4, ge=1, le=64, description="Files this janitor uploads at once."
    )
    upload_part_size_mb: int = Field(
        16,
        ge=5,
        le=5120,
        description="Multipart part size in MiB (S3's minimum is 5); smaller files go in one PUT.",
    )
    upload_max_bps: int = Field(
        0,
        ge=0,
        description="Upload bandwidth cap of this janitor, bytes a second, all files (0: none).",
    )
    upload_retry_initial_s: float = Field(
        5.0, gt=0, description="First retry delay of a failed upload (doubles, with jitter)."
    )
    upload_retry_max_s: float = Field(
        600.0, gt=0, description="Cap of the retry delay of a failed upload."
    )
    upload_timeout_s: float = Field(
        30.0, gt=0, description="Connect and read timeout of one S3 request, seconds."
    )
