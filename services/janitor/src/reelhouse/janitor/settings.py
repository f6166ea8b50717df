"""Settings of the janitor service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import CommonSettings


class JanitorSettings(CommonSettings):
    """Janitor: retention, purges, orphans, disk watermarks."""

    interval_s: float = Field(60.0, gt=0, description="Seconds between janitor passes.")
