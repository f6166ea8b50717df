"""Recording jobs: the Recordings API bodies (as the seed shows them) and the stored document.

The field names, enums and shapes follow ``shared/seeds/recordings-api.txt``; its example
payloads validate unchanged. Blocks the dashboard always sends in a "Disabled" state
(``transcoding``, ``modify_audio``, ``modify_video``, ``overlay``) are accepted as sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.listing import ListQuery
from reelhouse.common.contracts.media import (
    CrossFieldSchema,
    InputIn,
    ModifyAudio,
    ModifyVideo,
    Overlay,
    Schedule,
    Transcoding,
    when,
)
from reelhouse.common.contracts.storage_targets import StorageClass
from reelhouse.common.contracts.types import SAFE_INT, Name, whole_int
from reelhouse.common.ffmpeg.capabilities import check_processing

OutputFormat = Literal["mp4", "avi", "flv", "mp3", "m3u8", "mpegts", "mkv"]
RecordingMode = Literal["RECORDING_MODE_INFINITY", "RECORDING_MODE_SPLIT_BY_TIME"]

FILE_EXTENSIONS: dict[str, str] = {
    "mp4": "mp4", "avi": "avi", "flv": "flv", "mp3": "mp3", "m3u8": "m3u8", "mpegts": "ts",
    "mkv": "mkv",
}  # fmt: skip
"""File extension written for each output format."""


class RecordingModeSettings(BaseModel):
    """Split length for ``RECORDING_MODE_SPLIT_BY_TIME`` (hours, minutes, seconds)."""

    model_config = ConfigDict(extra="forbid")

    hours: whole_int(ge=0, le=168) = 0
    minutes: whole_int(ge=0, le=59 * 60) = 0
    seconds: whole_int(ge=0, le=59 * 3600) = 0
    align_to_clock: StrictBool = False
    """Split mode: cut at wall-clock multiples of the split length (UTC time of day: every 10
    minutes at :00, :10, ...) instead of every N seconds from the start; the first segment is
    shorter. Not for m3u8."""

    @property
    def total_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds


class RecordingIn(CrossFieldSchema):
    """Body of ``/api/recording/create`` (and of ``update``, with ``id``).

    ``RECORDING_MODE_SPLIT_BY_TIME`` needs a positive split length; ``align_to_clock`` needs
    split mode and a format other than m3u8. Processing must fit the output format (FFmpeg's
    codecs and containers: an overlay, a video change or a frame size needs video encoding,
    mp3 is audio only, ...): a combination FFmpeg cannot run is a 400 naming the field."""

    model_config = ConfigDict(extra="forbid")

    recording_name: Name
    recording_type: Literal["RECORDING_STREAM_TO_FILE"] = "RECORDING_STREAM_TO_FILE"
    input: InputIn
    output_format: OutputFormat
    recording_mode: RecordingMode = "RECORDING_MODE_INFINITY"
    recording_mode_settings: RecordingModeSettings = Field(default_factory=RecordingModeSettings)
    transcoding: Transcoding = Field(default_factory=Transcoding)
    modify_audio: ModifyAudio = Field(default_factory=ModifyAudio)
    modify_video: ModifyVideo = Field(default_factory=ModifyVideo)
    overlay: Overlay = Field(default_factory=Overlay)
    delete_after: whole_int(ge=0, le=36500) = 0
    max_files: whole_int(ge=0, le=SAFE_INT) = 0
    """Keep at most this many files of the job (oldest go first; 0: no limit)."""
    max_bytes: whole_int(ge=0, le=SAFE_INT) = 0
    """Keep at most this many bytes of the job's files (oldest go first; 0: no limit)."""
    active: StrictBool = False
    seamless: StrictBool | None = None
    """Join the parts of one session (source drops, failovers) into one file when it ends.
    Default (None): on for RECORDING_MODE_INFINITY; split-by-time never joins. An m3u8
    session is not joined: its parts continue one playlist, with a discontinuity at each."""
    seamless_reconnect_s: whole_int(ge=0, le=7 * 86400) = 0
    """Seamless jobs: seconds a source may stay away before its live session ends (the parts so
    far are joined into one file; the source's return starts a new file). 0: no limit, a session
    lasts until stop/start/update (or the end of a schedule window)."""
    max_bytes_total: whole_int(ge=0, le=SAFE_INT) = 0
    """Quota: when the job's stored files (its folder, the part being written included) reach
    this many bytes, the job is stopped (``active: false``) with a ``quota_exceeded`` event.
    0: no quota. Not ``max_bytes``, which is retention (oldest files deleted)."""
    schedule: Schedule | None = None
    """When the job may run (one-off or weekly windows); None: whenever it is active."""
    storage_id: ObjectIdStr | None = None
    """Object storage (issue 24): the storage target (``/api/storage-targets``) every closed
    file is uploaded to; None: files stay local. Must name a target of the tenant."""
    keep_local: StrictBool = False
    """Keep the local copy of an uploaded file (otherwise it is deleted once the object is
    verified and ``local_grace_hours`` have passed)."""
    local_grace_hours: whole_int(ge=0, le=8760) = 0
    """Hours an uploaded, verified file stays on the local disk before it is deleted."""
    archive_storage_id: ObjectIdStr | None = None
    """``archiveFile`` of an uploaded file copies its object to this storage target (then
    deletes the original); None: archived within its own target (``archive_storage_class``)."""
    archive_storage_class: StorageClass | None = None
    """The storage class an archived object is written with (``GLACIER``: the seed's "S3
    Glacier"); None: the archive target's own class."""

    @field_validator("recording_mode_settings")
    @classmethod
    def _split_needs_a_duration(
        cls, value: RecordingModeSettings, info: ValidationInfo
    ) -> RecordingModeSettings:
        if info.data.get("recording_mode") == "RECORDING_MODE_SPLIT_BY_TIME" and (
            value.total_seconds <= 0
        ):
            raise ValueError(
                "RECORDING_MODE_SPLIT_BY_TIME needs a positive duration (hours, minutes, seconds)"
            )
        return value

    @model_validator(mode="after")
    def _aligned_needs_split(self) -> RecordingIn:
        if self.recording_mode_settings.align_to_clock and (
            self.recording_mode != "RECORDING_MODE_SPLIT_BY_TIME" or self.output_format == "m3u8"
        ):
            raise ValueError(
                "@recording_mode_settings.align_to_clock: needs RECORDING_MODE_SPLIT_BY_TIME "
                "and an output format other than m3u8"
            )
        return self

    @model_validator(mode="after")
    def _processing_fits_output(self) -> RecordingIn:
        # Combinations FFmpeg cannot run are a 400 naming the field ("@transcoding.x: ...").
        check_processing(
            transcoding=self.transcoding,
            modify_audio=self.modify_audio,
            modify_video=self.modify_video,
            overlay=self.overlay,
            output_format=self.output_format,
        )
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        positive = [{"required": [unit], "properties": {unit: {"minimum": 1}}}
                    for unit in ("hours", "minutes", "seconds")]  # fmt: skip
        split = "RECORDING_MODE_SPLIT_BY_TIME"
        aligned = {
            "properties": {"align_to_clock": {"const": True}},
            "required": ["align_to_clock"],
        }
        return {
            "allOf": [
                when(
                    "recording_mode",
                    split,
                    {
                        "required": ["recording_mode_settings"],
                        "properties": {"recording_mode_settings": {"anyOf": positive}},
                    },
                ),
                {
                    "if": {
                        "properties": {"recording_mode_settings": aligned},
                        "required": ["recording_mode_settings"],
                    },
                    "then": {
                        "required": ["recording_mode"],
                        "properties": {
                            "recording_mode": {"const": split},
                            "output_format": {"not": {"const": "m3u8"}},
                        },
                    },
                },
            ]
        }

    @property
    def is_seamless(self) -> bool:
        """Whether the parts of a session are joined into one file when the session ends."""
        if self.recording_mode != "RECORDING_MODE_INFINITY":
            return False
        return True if self.seamless is None else self.seamless

    def config(self) -> dict[str, Any]:
        """The job's stored configuration (everything but the input, which is its own document).

        ``recording_mode_settings.align_to_clock`` is stored only when set, so the block reads
        back exactly as the seed's clients sent it."""
        config = self.model_dump(mode="json", exclude={"input"})
        if not self.recording_mode_settings.align_to_clock:
            config["recording_mode_settings"].pop("align_to_clock", None)
        return config


class RecordingUpdate(RecordingIn):
    """Body of ``/api/recording/update``: create's payload plus ``id``."""

    id: ObjectIdStr


class RemoveFileBody(BaseModel):
    """Body of ``/api/recording/removeFile``."""

    model_config = ConfigDict(extra="forbid")

    record_id: ObjectIdStr
    file_id: ObjectIdStr


FILTER_FIELDS = {
    "recording_name", "recording_type", "output_format", "recording_mode", "active",
    "delete_after", "_id", "id",
}  # fmt: skip
"""Fields a ``getAll``/``getCount`` filter may name (equality only; no ``$`` operators)."""

SORT_FIELDS = {"created", "modified", "recording_name", "output_format", "active"}


class ListBody(ListQuery):
    """Body of ``getAll`` / ``getCount`` for recordings."""

    filter_fields = frozenset(FILTER_FIELDS)
    sort_fields = frozenset(SORT_FIELDS)
