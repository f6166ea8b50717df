"""Streams: named identities above transport endpoints (``seeds/streams-api.txt``), and the
prober's messages (docs/ARCHITECTURE.md §1, §3).

A stream row is stored as::

    {_id, tenant, name, role_name, stream_id, host, entity_id, entityModel, module_name,
     stream_url, stream_meta_data, audio_settings, stream_info, passphrase, active, generation,
     status: {state, since, node, error} | absent,     written by the monitoring prober
     runtime: {node, lease_until, ...} | absent,       the monitoring lease (jobs.lease)
     created, modified}

``active`` is "monitoring on": a prober claims an active row that has a ``stream_url`` by lease
and probes it periodically; on a row of an ingest server it also means "accepts connections"
(docs/INGEST.md). ``entityModel`` is derived from ``module_name``. ``entity_id`` names an existing
server of ``module_name`` (checked by the API).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from reelhouse.common.contracts.base import BusMessage, ObjectIdStr, Timestamp, utcnow
from reelhouse.common.contracts.ingest import Passphrase
from reelhouse.common.contracts.listing import name_fields
from reelhouse.common.contracts.messages import JobEvent
from reelhouse.common.contracts.types import (
    INPUT_SCHEMES,
    NUL_FREE,
    REQUIRED_TEXT_PATTERN,
    TEXT_PATTERN,
    InputType,
    Name,
    _storable,
    _stream_url,
    json_object_schema,
    string_schema,
    url_pattern,
    url_scheme,
    whole_int,
)

RoleName = Literal["publisher", "receiver", "pusher", "puller"]
StreamModule = Literal["MODULE_SRT_SERVERS", "MODULE_RTMP_SERVERS"]

ENTITY_MODELS: Final[dict[str, str]] = {
    "MODULE_SRT_SERVERS": "ServerModel",
    "MODULE_RTMP_SERVERS": "RtmpServerModel",
}
"""``entityModel`` of a row, derived from its ``module_name`` (the seed shows ``ServerModel``)."""

PROBE_INPUT_TYPES: Final[dict[str, InputType]] = {}
"""URL scheme → the input type whose protocol whitelist a probe of it uses (http → HLS's,
which is a superset of DASH's). Nothing else (``file:``, ``concat:``, ...) is ever probed."""
for _type, _schemes in INPUT_SCHEMES.items():
    for _scheme in _schemes:
        PROBE_INPUT_TYPES.setdefault(_scheme, _type)  # type: ignore[arg-type]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _probe_url(value: str) -> str:
    value = value.strip()
    scheme = url_scheme(value) if "://" in value or ":" in value else ""
    if scheme not in PROBE_INPUT_TYPES:
        allowed = ", ".join(f"{s}://" for s in PROBE_INPUT_TYPES)
        shown = f"{scheme}: URLs are" if scheme else "this is not a URL and is"
        raise ValueError(f"{shown} not accepted; use a network URL ({allowed})")
    return _stream_url(value)


PROBE_URL_PATTERN: Final = url_pattern(tuple(PROBE_INPUT_TYPES))

ProbeUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_probe_url),
    string_schema(pattern=PROBE_URL_PATTERN, max_length=2048),
]
"""A live network URL that may be probed: the schemes of the FFmpeg input types only."""


def _probe_url_or_blank(value: str) -> str:
    return "" if not value.strip() else _probe_url(value)


ProbeUrlOrBlank = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_probe_url_or_blank),
    string_schema(pattern=f"^$|{PROBE_URL_PATTERN}", max_length=2048),
]
"""A :data:`ProbeUrl`, or ``""`` for none."""


def _clean_text(value: str) -> str:
    value = value.strip()
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _required(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


StreamId = Annotated[
    str,
    StringConstraints(max_length=512),
    AfterValidator(_clean_text),
    AfterValidator(_required),
    string_schema(pattern=REQUIRED_TEXT_PATTERN, max_length=512),
]
"""A stream id as the transport sees it (``publisher/main-stage/srt-main``)."""

Host = Annotated[str, StringConstraints(max_length=253, pattern=r"^[A-Za-z0-9.:\[\]_-]*$")]
"""An optional host binding (name, IPv4 or IPv6 address); ``""`` for none."""

Label = Annotated[
    str,
    StringConstraints(max_length=128),
    AfterValidator(_clean_text),
    string_schema(pattern=TEXT_PATTERN, max_length=128),
]
"""A short label a person typed (track or channel name); may be empty."""

CHANNEL_LAYOUT_SIZES: Final[dict[str, int]] = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4,
    "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6,
    "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8, "7.1(wide)": 8, "octagonal": 8, "downmix": 2,
}  # fmt: skip
"""FFmpeg's channel layouts and their channel counts (a layout not listed is kept as sent)."""


class AudioChannel(BaseModel):
    """One named channel of a track: ``{"id": "FL", "name": "Left"}``."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_]+$")]
    name: Label = ""


class AudioStream(BaseModel):
    """One audio track: its index, name, FFmpeg channel layout and named channels."""

    model_config = ConfigDict(extra="forbid")

    id: whole_int(ge=0, le=255)
    name: Label = ""
    channel_layout: Annotated[
        str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9.()+_-]+$")
    ]
    channels: Annotated[list[AudioChannel], Field(max_length=64)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _channels_fit_layout(self) -> AudioStream:
        size = CHANNEL_LAYOUT_SIZES.get(self.channel_layout)
        if size is not None and self.channels and len(self.channels) != size:
            raise ValueError(
                f"@channels: layout {self.channel_layout} has {size} channel(s), "
                f"{len(self.channels)} named"
            )
        ids = [c.id for c in self.channels]
        if len(set(ids)) != len(ids):
            raise ValueError("@channels: channel ids must be unique within a track")
        return self


class AudioSettings(BaseModel):
    """A saved audio layout: tracks with channel layouts and named channels."""

    model_config = ConfigDict(extra="forbid")

    streams: Annotated[list[AudioStream], Field(max_length=32)] = Field(default_factory=list)

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, value: list[AudioStream]) -> list[AudioStream]:
        ids = [s.id for s in value]
        if len(set(ids)) != len(ids):
            raise ValueError("track ids must be unique")
        return value


DEFAULT_AUDIO_SETTINGS: Final[dict[str, Any]] = {
    "streams": [
        {
            "id": 0,
            "name": "Track-0",
            "channel_layout": "stereo",
            "channels": [{"id": "FL", "name": "Left"}, {"id": "FR", "name": "Right"}],
        }
    ]
}
"""What a row created without ``audio_settings`` carries (the seed's create response)."""

META_DATA_MAX_BYTES: Final = 16_384


def _check_keys(value: Any, depth: int = 0) -> None:
    if depth > 6:
        raise ValueError("is nested too deeply (6 levels at most)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not key or key.startswith("$") or "." in key:
                raise ValueError(f"key {key!r} is not allowed (no '$' prefix, no '.')")
            _check_keys(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, depth + 1)


def _meta_data(value: dict[str, Any]) -> dict[str, Any]:
    _check_keys(value)
    _storable(value)
    if len(json.dumps(value)) > META_DATA_MAX_BYTES:
        raise ValueError(f"must be at most {META_DATA_MAX_BYTES} bytes of JSON")
    return value


MetaData = Annotated[
    dict[str, Any],
    AfterValidator(_meta_data),
    WithJsonSchema(
        json_object_schema(
            description="A JSON object, at most 16 KiB and 6 levels deep; keys without a "
            "leading '$', '.' or NUL; no array directly inside an array; 64-bit whole numbers."
        )
    ),
]
"""Saved inspection output (``{"codec_name": "h264", "fps": "30/1"}``); a bounded JSON object."""


class StreamIn(BaseModel):
    """Body of ``/api/streams/create``."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    role_name: RoleName
    stream_id: StreamId
    host: Host = ""
    entity_id: ObjectIdStr
    module_name: StreamModule
    stream_url: ProbeUrlOrBlank = ""
    """Where the stream can be probed and monitored (an extension of the seed)."""
    stream_meta_data: MetaData = Field(default_factory=dict)
    audio_settings: AudioSettings | None = None
    passphrase: Passphrase = ""
    """On an ingest server's row: the SRT passphrase of this stream (overrides the server's),
    or the RTMP publisher's ``?key=``; ``""``: the server's (SRT) or no key (RTMP)."""
    active: StrictBool = False

    def document(self) -> dict[str, Any]:
        """The stored fields (``entityModel`` derived, default audio layout filled in)."""
        doc = self.model_dump(mode="json", exclude={"audio_settings"})
        doc["entityModel"] = ENTITY_MODELS[self.module_name]
        doc["audio_settings"] = (
            self.audio_settings.model_dump(mode="json")
            if self.audio_settings is not None
            else json.loads(json.dumps(DEFAULT_AUDIO_SETTINGS))
        )
        return doc


class StreamUpdate(BaseModel):
    """Body of ``/api/streams/update``: ``id`` plus the fields to change (others are kept)."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr
    name: Name | None = None
    role_name: RoleName | None = None
    stream_id: StreamId | None = None
    host: Host | None = None
    entity_id: ObjectIdStr | None = None
    module_name: StreamModule | None = None
    stream_url: ProbeUrlOrBlank | None = None
    stream_meta_data: MetaData | None = None
    audio_settings: AudioSettings | None = None
    passphrase: Passphrase | None = None
    active: StrictBool | None = None

    def changes(self) -> dict[str, Any]:
        """The fields the body sets (``null`` means "keep"), ``entityModel`` re-derived."""
        data = self.model_dump(mode="json", exclude={"id"}, exclude_none=True)
        if self.module_name is not None:
            data["entityModel"] = ENTITY_MODELS[self.module_name]
        return data


FILTER_FIELDS: Final = frozenset(
    {"id", "_id", "name", "role_name", "stream_id", "host", "entity_id", "entityModel",
     "module_name", "active", "search"}
)  # fmt: skip
SORT_FIELDS: Final = frozenset(
    {"id", "_id", "name", "role_name", "stream_id", "module_name", "active", "created",
     "modified"}
)  # fmt: skip


class StreamListBody(BaseModel):
    """Body of ``getAll`` / ``getCount``: limit, skip, sort, filter (``search`` matches name
    and stream_id, case-insensitive, as text)."""

    model_config = ConfigDict(extra="forbid")

    limit: whole_int(ge=0, le=1000) = 0
    skip: whole_int(ge=0, le=2**31 - 1) = 0  # past int64 MongoDB fails (500)
    sort: dict[str, Literal[1, -1]] = Field(default_factory=lambda: {"created": 1})
    filter: dict[str, Annotated[str, NUL_FREE, StringConstraints(max_length=512)] | StrictBool] = (
        Field(default_factory=dict)
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        name_fields(schema, filter_fields=FILTER_FIELDS, sort_fields=SORT_FIELDS)
        return schema

    @field_validator("filter")
    @classmethod
    def _known_filter_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key.startswith("$") or key not in FILTER_FIELDS:
                raise ValueError(
                    f"unknown field {key!r} (operators are not accepted); allowed: "
                    f"{', '.join(sorted(FILTER_FIELDS))}"
                )
        return value

    @field_validator("sort")
    @classmethod
    def _known_sort_fields(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            if key not in SORT_FIELDS:
                raise ValueError(
                    f"unknown field {key!r}; allowed: {', '.join(sorted(SORT_FIELDS))}"
                )
        return value


class StreamIdBody(BaseModel):
    """``{"id": "..."}``: getById, start, stop, remove."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr


def _port(value: Any) -> Any:
    # "mixed" in the seed: a number, or the same number as a string.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


Port = whole_int(ge=1, le=65535)


class SetStreamInfoBody(BaseModel):
    """Body of ``/api/streams/setStreamInfo``: which flow (stream_id, role, port) and what was
    discovered about it (all optional besides the identity)."""

    model_config = ConfigDict(extra="forbid")

    short_stream_id: Annotated[str, NUL_FREE, StringConstraints(max_length=256)] = ""
    stream_id: StreamId
    role: RoleName
    port: Port | None = None
    receiver_port: Port | None = None
    stream_url: ProbeUrl | None = None
    stream_meta_data: MetaData | None = None
    audio_settings: AudioSettings | None = None

    @field_validator("port", "receiver_port", mode="before")
    @classmethod
    def _numeric_string(cls, value: Any) -> Any:
        return _port(value)


class StreamInfoBody(BaseModel):
    """Body of ``/api/streams/getStreamInfo``."""

    model_config = ConfigDict(extra="forbid")

    stream_url: ProbeUrl
    timeout: Annotated[float, Field(gt=0, le=60)] | None = None
    """Deadline, seconds (an extension; default ``REELHOUSE_PROBE_TIMEOUT_S``, capped by the
    prober's ``REELHOUSE_PROBE_TIMEOUT_MAX_S``)."""


# -- the prober's messages ------------------------------------------------------------------


class ProbeRequest(BusMessage):
    """Request on ``<p>.req.prober.probe``: probe ``url`` within ``timeout_s``."""

    type: Literal["probe_request"] = "probe_request"
    url: str
    timeout_s: float | None = None
    """The caller's deadline, seconds; None: the prober's default. Capped by the prober."""


class ProbeReply(BusMessage):
    """The prober's answer: ffprobe's ``streams`` and ``format`` for the URL."""

    type: Literal["probe_reply"] = "probe_reply"
    streams: list[dict[str, Any]]
    format: dict[str, Any]
    probed_at: Timestamp = Field(default_factory=utcnow)
    cached: bool = False
    node: str = ""


StreamState = Literal["online", "offline"]


class StreamStatus(BaseModel):
    """A monitored stream's live status, kept in the row's ``status`` by its prober."""

    model_config = ConfigDict(extra="ignore")

    state: StreamState
    since: datetime
    """When the stream entered this state."""
    node: str
    error: str | None = None
    """Why the last probe failed (offline only)."""


class StreamStatusChanged(JobEvent):
    """``stream_status`` event on ``<p>.evt.stream.<id>.stream_status``: a monitored stream
    went online or offline, or monitoring ended (``state: "unmonitored"``)."""

    subject: ClassVar[str] = "<p>.evt.stream.<stream_id>.stream_status"
    type: Literal["stream_status"] = "stream_status"  # type: ignore[assignment]
    module: Literal["stream"] = "stream"  # type: ignore[assignment]
    state: str | None = None
    """``online``, ``offline`` or ``unmonitored``."""
    reason: str | None = None
    """Why the last probe failed (``offline`` only)."""
    since: Timestamp | None = None
    """When the stream entered this state."""
    stream_meta_data: dict[str, Any] | None = None
    """What the probe read of the stream (``online`` only)."""
