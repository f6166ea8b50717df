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
