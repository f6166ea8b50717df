"""Media blocks shared by recordings and restreams: input, transcoding, audio/video, overlay.

Values follow the seeds: the dashboard sends every block, using ``"Disabled"``/``"DISABLED"`` and
empty strings for "not set". Every accepted value maps to FFmpeg arguments in
:mod:`reelhouse.common.ffmpeg.shared_args`; what FFmpeg cannot run together is refused by
:mod:`reelhouse.common.ffmpeg.capabilities`. An unsupported value is a validation error (400)
naming the field, so a bad option never reaches FFmpeg.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from reelhouse.common.contracts.types import (
    INGEST_INPUT_TYPES,
    INPUT_SCHEMES,
    NUL_FREE_PATTERN,
    TEXT_PATTERN,
    InputType,
    JsonObject,
    Kbps,
    OptionalStreamUrl,
    StreamUrl,
    url_pattern,
    url_scheme,
    whole_int,
)


class CrossFieldSchema(BaseModel):
    """A model whose validators compare fields: :meth:`cross_field_schema` says in JSON schema
    (``oneOf``, ``if``/``then``) what they require, so the OpenAPI document promises no more than
    the model accepts (issue 20, item 6)."""

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        """Keywords added to the model's JSON schema (none by default)."""
        return {}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema.update(cls.cross_field_schema())
        return schema


def when(field: str, value: Any, then: dict[str, Any]) -> dict[str, Any]:
    """``if`` ``field`` (present) is ``value`` ``then`` ...: one ``allOf`` entry."""
    return {"if": {"properties": {field: {"const": value}}, "required": [field]}, "then": then}


Disabled = Literal["Disabled"]
Unset = Literal[""]


class InputIn(CrossFieldSchema):
    """The ``input`` block of a create/update body (one live source). ``input_stream_url``
    takes the schemes of its ``input_type`` (``INPUT_TYPE_SRT_URL``: ``srt://``, ...)."""

    model_config = ConfigDict(extra="forbid")

    input_type: InputType
    application: Literal["IO_APPLICATION_FFMPEG", "IO_APPLICATION_STREAMLINK"] = (
        "IO_APPLICATION_FFMPEG"
    )
    """Who reads the source: FFmpeg itself, or streamlink, which resolves
    ``input_stream_url`` (a platform's channel URL or an HLS URL; an ``INPUT_TYPE_HLS_URL``
    input), refreshes its playlists and feeds FFmpeg through a pipe (channels, issue 22).
    ``input_settings.quality`` names streamlink's stream (default ``best``)."""
    input_stream_url: OptionalStreamUrl = ""
    """Required for the ``*_URL`` types; optional (and never read) for the ingest types."""
    input_stream_listen_port: JsonObject | whole_int(ge=0, le=65535) | Unset = Field(
        default_factory=dict
    )
    """Stored as sent (the seed sends ``{}``); a number is a port."""
    input_settings: JsonObject = Field(default_factory=dict)
    # Stored as sent: printable text (no control characters, which the database cannot hold).
    input_module_id: str = Field("", max_length=64, pattern=TEXT_PATTERN)
    input_stream_id: str = Field("", max_length=256, pattern=TEXT_PATTERN)
    entity_name: str = Field("", max_length=128, pattern=TEXT_PATTERN)
    module_name: str = Field("", max_length=64, pattern=TEXT_PATTERN)

    @model_validator(mode="after")
    def _scheme_fits_type(self) -> InputIn:
        if self.application == "IO_APPLICATION_STREAMLINK" and self.input_type != (
            "INPUT_TYPE_HLS_URL"
        ):
            raise _field_error(
                "application", "IO_APPLICATION_STREAMLINK reads INPUT_TYPE_HLS_URL inputs only"
            )
        if self.input_type in INGEST_INPUT_TYPES:
            for field in ("input_module_id", "input_stream_id"):
                if not OBJECT_ID.match(getattr(self, field)):
                    raise _field_error(
                        field,
                        f"{self.input_type} needs the {_INGEST_NAMES[field]} (a 24-hex id)",
                    )
            if not self.input_stream_url:
                return self
        elif not self.input_stream_url:
            raise _field_error("input_stream_url", f"{self.input_type} needs a URL")
        allowed = INPUT_SCHEMES[self.input_type]
        scheme = url_scheme(self.input_stream_url)
        if scheme not in allowed:
            # Raised as a field error so the API names input.input_stream_url.
            raise _field_error(
                "input_stream_url",
                f"{self.input_type} takes {' or '.join(s + '://' for s in allowed)} URLs, "
                f"not {scheme}:",
            )
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        def one(input_type: str, schemes: tuple[str, ...]) -> dict[str, Any]:
            if input_type not in INGEST_INPUT_TYPES:
                # Streamlink reads HLS inputs only.
                readers = ["IO_APPLICATION_FFMPEG"]
                if input_type == "INPUT_TYPE_HLS_URL":
                    readers.append("IO_APPLICATION_STREAMLINK")
                return {
                    "properties": {
                        "input_type": {"const": input_type},
                        "input_stream_url": {"pattern": url_pattern(schemes)},
                        "application": {"enum": readers},
                    },
                    "required": ["input_stream_url"],
                }
            return {
                "properties": {
                    "input_type": {"const": input_type},
                    "input_stream_url": {"pattern": f"^$|{url_pattern(schemes)}"},
                    "input_module_id": {"pattern": OBJECT_ID.pattern},
                    "input_stream_id": {"pattern": OBJECT_ID.pattern},
                    "application": {"enum": ["IO_APPLICATION_FFMPEG"]},
                },
                "required": ["input_module_id", "input_stream_id"],
            }

        return {"oneOf": [one(t, schemes) for t, schemes in INPUT_SCHEMES.items()]}


OBJECT_ID: Final = re.compile(r"^[0-9a-f]{24}$")
_INGEST_NAMES: Final = {
    "input_module_id": "ingest server's id",
    "input_stream_id": "publisher stream row's id",
}


def _field_error(field: str, message: str) -> ValueError:
    """A ValueError whose message names ``field`` (see errors.validation_details)."""
    return ValueError(f"@{field}: {message}")


VideoCodec = Literal["Disabled", "libx264", "libx265"]
AudioCodec = Literal["Disabled", "aac", "libmp3lame", "mp3", "libopus", "opus", "ac3"]
Preset = Literal[
    "Disabled", "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
    "slower", "veryslow",
]  # fmt: skip
Tune = Literal["Disabled", "film", "animation", "grain", "stillimage", "fastdecode", "zerolatency"]
PixFmt = Literal["Disabled", "yuv420p", "yuv422p", "yuv444p", "nv12", "yuv420p10le"]

PositiveIntOrUnset = Annotated[int, Field(gt=0, le=100_000)] | Unset
"""A positive integer, or ``""`` for "not set" (the dashboard sends empty strings)."""


def _int_or_blank(value: Any) -> Any:
    # The dashboard sends numbers as strings in some fields ("xlnx_hwdev": "0").
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value


class Transcoding(BaseModel):
    """Optional re-encoding. ``"Disabled"`` codecs mean stream copy."""

    model_config = ConfigDict(extra="forbid")

    video_transcoding: VideoCodec = "Disabled"
    output_video_bitrate: Kbps = 6000
    preset: Preset = "ultrafast"
    tune: Tune = "Disabled"
    crf: Annotated[int, Field(ge=0, le=51)] | Disabled = "Disabled"
    pix_fmt: PixFmt = "Disabled"
    encoding_rate: Annotated[int, Field(gt=0, le=200_000)] | Unset = ""
    """Peak video rate (``-maxrate``), kbit/s."""
    filter_fps: Annotated[float, Field(gt=0, le=240)] | Unset = ""
    gop: Annotated[int, Field(gt=0, le=1000)] | Disabled = "Disabled"
    """Keyframe interval, frames."""
    force_key_frames: Annotated[int, Field(ge=0, le=60)] | Disabled | Unset = 2
    """Force a keyframe every N seconds when encoding (0, "" or "Disabled": off)."""
    frame_width: Annotated[int, Field(ge=16, le=7680)] | Unset = ""
    frame_height: Annotated[int, Field(ge=16, le=4320)] | Unset = ""
    slices: Annotated[int, Field(gt=0, le=64)] | Unset = ""
    cores: Annotated[int, Field(gt=0, le=256)] | Unset = ""
    """Encoder threads."""
    xlnx_hwdev: Annotated[int, Field(ge=0, le=16)] = 0
    """Xilinx device index; accepted for compatibility, unused (no such hardware here)."""
    audio_transcoding: AudioCodec = "Disabled"
    output_audio_bitrate: Kbps = 128
    sample_rate: Literal[8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000] = 48000

    @field_validator(
        "crf", "encoding_rate", "gop", "force_key_frames", "frame_width", "frame_height",
        "slices", "cores", "xlnx_hwdev", "filter_fps", mode="before",
    )  # fmt: skip
    @classmethod
    def _numbers_as_strings(cls, value: Any) -> Any:
        return _int_or_blank(value)


_CHANNEL = "(?:[1-9]|[1-5][0-9]|6[0-4])"
"""A channel number, 1 to 64 (the pattern of :attr:`ModifyAudio.channel`)."""


class ModifyAudio(BaseModel):
    """Audio channel/track selection."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["DISABLED", "SELECT_TRACK", "SELECT_CHANNELS", "MUTE"] = "DISABLED"
    channel: str = Field(
        "1,2", max_length=64, json_schema_extra={"pattern": rf"^{_CHANNEL}(?:,{_CHANNEL})*$"}
    )
    """Comma-separated 1-based input channels to keep, in output order (SELECT_CHANNELS). The
    schema's pattern is the normal form; the validator also takes spaces around the numbers."""
    track: str = Field("0", max_length=4, json_schema_extra={"pattern": r"^[0-9]+$"})
    """0-based audio track (stream) of the input to use (SELECT_TRACK)."""

    @field_validator("channel")
    @classmethod
    def _channels(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(p.isdigit() and 1 <= int(p) <= 64 for p in parts):
            raise ValueError("must be comma-separated channel numbers from 1, e.g. '1,2'")
        return ",".join(parts)

    @field_validator("track")
    @classmethod
    def _track(cls, value: str) -> str:
        if not value.strip().isdigit():
            raise ValueError("must be a track number from 0, e.g. '0'")
        return value.strip()

    @property
    def channels(self) -> list[int]:
        return [int(p) for p in self.channel.split(",")]


class ModifyVideo(BaseModel):
    """Simple video changes (each needs video encoding)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal[
        "DISABLED", "DEINTERLACE", "FLIP_HORIZONTAL", "FLIP_VERTICAL", "ROTATE_90",
        "ROTATE_180", "ROTATE_270", "GRAYSCALE",
    ] = "DISABLED"  # fmt: skip


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: Annotated[int, Field(ge=0, le=7680)] = 0
    y: Annotated[int, Field(ge=0, le=4320)] = 0


class Overlay(CrossFieldSchema):
    """Text or image drawn at x/y (needs video encoding). ``TEXT`` needs ``text``, ``IMAGE``
    an http(s) ``image_url``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["DISABLED", "TEXT", "IMAGE"] = "DISABLED"
    position: Position = Field(default_factory=Position)
    text: str = Field("", max_length=256, pattern=NUL_FREE_PATTERN)
    font_size: Annotated[int, Field(ge=6, le=400)] = 32
    font_color: str = Field("white", pattern=r"^(#[0-9A-Fa-f]{6}|[a-z]{3,20})$")
    image_url: StreamUrl | Unset = ""
    """http(s) URL of a PNG/JPEG to draw; never a local path."""

    @model_validator(mode="after")
    def _content_present(self) -> Overlay:
        if self.type == "TEXT" and not self.text.strip():
            raise _field_error("text", "a TEXT overlay needs text")
        if self.type == "IMAGE":
            if not self.image_url:
                raise _field_error("image_url", "an IMAGE overlay needs image_url")
            if url_scheme(self.image_url) not in ("http", "https"):
                raise _field_error("image_url", "must be an http:// or https:// URL")
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        text = {"type": "string", "pattern": r"[^\s\x1c-\x1f\x85]"}
        image = {"type": "string", "pattern": url_pattern(("http", "https"))}
        return {
            "allOf": [
                when("type", "TEXT", {"required": ["text"], "properties": {"text": text}}),
                when(
                    "type", "IMAGE", {"required": ["image_url"], "properties": {"image_url": image}}
                ),
            ]
        }


# -- schedules (issue 10) -------------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = Weekday.__args__  # type: ignore[attr-defined]
"""Weekday names in ISO order (``mon`` is 0, as ``date.weekday()``)."""

ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")]
"""A local time of day, ``HH:MM`` or ``HH:MM:SS`` (24 h)."""


class WeeklyWindow(BaseModel):
    """A window that opens every week on ``days`` at ``start`` (local time of the schedule's
    ``timezone``) and closes at ``stop``; a ``stop`` at or before ``start`` is on the next day."""

    model_config = ConfigDict(extra="forbid")

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: ClockTime
    stop: ClockTime


TIMEZONES = sorted(available_timezones())
"""The IANA zone names this host knows (what ``ZoneInfo`` accepts; the schema's enum, unless the
host has no time zone database)."""


class Schedule(CrossFieldSchema):
    """When a job may run: a job is desired-running when ``active`` *and* inside a window.

    * only ``start_at``/``stop_at``: one window (either end may be open);
    * ``weekly``: the weekly windows, bounded by ``start_at``/``stop_at`` when given.

    Naive ``start_at``/``stop_at`` are read in ``timezone``. The maths is in
    :mod:`reelhouse.common.schedule`.
    """

    model_config = ConfigDict(extra="forbid")

    start_at: datetime | None = None
    stop_at: datetime | None = None
    weekly: list[WeeklyWindow] = Field(default_factory=list, max_length=50)
    timezone: str = Field(
        "UTC", max_length=64, json_schema_extra={"enum": TIMEZONES} if TIMEZONES else None
    )
    """IANA zone name (``Europe/Berlin``) for the weekly times and naive datetimes."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. 'Europe/Berlin')") from exc
        return value

    @model_validator(mode="after")
    def _something_to_schedule(self) -> Schedule:
        if self.start_at is None and self.stop_at is None and not self.weekly:
            raise ValueError("a schedule needs start_at, stop_at or weekly windows")
        zone = ZoneInfo(self.timezone)
        for name in ("start_at", "stop_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=zone))  # validate_assignment is off
        if self.start_at and self.stop_at and self.stop_at <= self.start_at:
            raise _field_error("stop_at", "must be after start_at")
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        given = [
            {"required": ["start_at"], "properties": {"start_at": {"type": "string"}}},
            {"required": ["stop_at"], "properties": {"stop_at": {"type": "string"}}},
            {"required": ["weekly"], "properties": {"weekly": {"minItems": 1}}},
        ]
        return {"anyOf": given}
