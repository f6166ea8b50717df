"""Bodies of ``getPlayback`` and ``getPlaybackUrl``. Every field is typed; unknown keys are 400s."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.media import CrossFieldSchema, when

PlaybackFormat = Literal["mp4", "ts", "hls"]
"""``mp4`` (fragmented, streamed while it is made), ``ts`` (MPEG-TS, streamed), ``hls`` (a VOD
playlist over the recorded MPEG-TS segments)."""


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC) if value is not None else None


class PlaybackQuery(BaseModel):
    """Body of ``/api/recording/getPlayback``: the job, and optionally a wall-clock window."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: ObjectIdStr
    from_: datetime | None = Field(
        None, alias="from", description="Only media after this time (ISO 8601; naive: UTC)."
    )
    to: datetime | None = Field(None, description="Only media before this time (ISO 8601).")

    _utc_times = field_validator("from_", "to")(classmethod(lambda cls, v: _utc(v)))

    @model_validator(mode="after")
    def _ordered(self) -> PlaybackQuery:
        if self.from_ is not None and self.to is not None and self.to <= self.from_:
            raise ValueError("@to: must be later than from")
        return self


class PlaybackUrlBody(CrossFieldSchema):
    """Body of ``/api/recording/getPlaybackUrl``. ``precise`` only with mp4/ts (the schema says
    so); ``duration`` at most the deployment's ``REELHOUSE_PLAYBACK_MAX_RANGE_S`` (a setting:
    the schema shows the type's own limit)."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr
    start: datetime = Field(description="Wall-clock start of the range (ISO 8601; naive: UTC).")
    duration: Annotated[float, Field(gt=0, le=7 * 24 * 3600, strict=True)] = Field(
        description="Length of the range, seconds (at most REELHOUSE_PLAYBACK_MAX_RANGE_S)."
    )
    format: PlaybackFormat
    precise: StrictBool = Field(
        False,
        description="mp4/ts: cut exactly at start and end (re-encoded) instead of at keyframes "
        "(copied). Not for hls.",
    )

    _utc_start = field_validator("start")(classmethod(lambda cls, v: _utc(v)))

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        # An HLS playlist lists whole segments: no exact cut (the route refuses precise+hls).
        return {"allOf": [when("format", "hls", {"properties": {"precise": {"const": False}}})]}
