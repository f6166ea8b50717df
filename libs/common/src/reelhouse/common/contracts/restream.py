"""Restream jobs: the Restreams API bodies (as the seed shows them) and their destinations.

The field names, enums and shapes follow ``shared/seeds/restreams-api.txt``; its three presets
validate unchanged. Beyond the seed, ``output`` may be a list of destinations for one input (one
FFmpeg, tee muxer): a dead destination never stops the others.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
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
)
from reelhouse.common.contracts.types import (
    NUL_FREE_PATTERN,
    JsonObject,
    Name,
    OptionalStreamUrl,
    url_pattern,
    url_scheme,
)
from reelhouse.common.ffmpeg.capabilities import check_processing

OutputType = Literal[
    "OUTPUT_TYPE_OTHER_RTMP_URL",
    "OUTPUT_TYPE_SRT_URL",
    "OUTPUT_TYPE_UDP_URL",
    "OUTPUT_TYPE_HLS",
    "OUTPUT_TYPE_DEV_NULL",
]

OUTPUT_SCHEMES: dict[str, tuple[str, ...]] = {
    "OUTPUT_TYPE_OTHER_RTMP_URL": ("rtmp", "rtmps"),
    "OUTPUT_TYPE_SRT_URL": ("srt",),
    "OUTPUT_TYPE_UDP_URL": ("udp",),
    "OUTPUT_TYPE_HLS": (),
    "OUTPUT_TYPE_DEV_NULL": (),
}
"""URL schemes each output type accepts; HLS and DEV_NULL take no URL (nothing else ever)."""

OUTPUT_CONTAINER: dict[str, str] = {
    "OUTPUT_TYPE_OTHER_RTMP_URL": "flv",
    "OUTPUT_TYPE_SRT_URL": "mpegts",
    "OUTPUT_TYPE_UDP_URL": "mpegts",
    "OUTPUT_TYPE_HLS": "m3u8",
    "OUTPUT_TYPE_DEV_NULL": "mpegts",
}
"""The container each destination carries (what codecs it can hold is checked against it)."""

MAX_OUTPUTS = 8

Port = Annotated[int, Field(ge=1, le=65535)]


def _field_error(field: str, message: str) -> ValueError:
    """A ValueError whose message names ``field`` (see the API's validation_details)."""
    return ValueError(f"@{field}: {message}")


class OutputIn(CrossFieldSchema):
    """One destination of a restream (the seed's ``output`` block). ``output_stream_url`` takes
    the schemes of its ``output_type``; HLS and DEV_NULL take none. Only an SRT output may
    listen on a port (then it needs no URL); only an RTMP output takes a stream key."""

    model_config = ConfigDict(extra="forbid")

    output_type: OutputType
    application: Literal["IO_APPLICATION_FFMPEG"] = "IO_APPLICATION_FFMPEG"
    output_stream_url: OptionalStreamUrl = ""
    output_stream_listen_port: JsonObject | Port | Literal[""] = Field(default_factory=dict)
    """SRT only: listen on this port (FFmpeg as SRT listener) instead of calling the URL."""
    output_settings: JsonObject = Field(default_factory=dict)
    output_stream_key: str = Field("", max_length=512, pattern=r"^[^\s/?#\x00]*$")
    """RTMP: appended to the URL as its last path segment when set."""
    entity_name: str = Field("", max_length=128, pattern=NUL_FREE_PATTERN)
    module_name: str = Field("", max_length=64, pattern=NUL_FREE_PATTERN)

    @field_validator("output_stream_listen_port", mode="before")
    @classmethod
    def _port_as_string(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        return value

    @model_validator(mode="after")
    def _url_fits_type(self) -> OutputIn:
        allowed = OUTPUT_SCHEMES[self.output_type]
        url = self.output_stream_url
        if not allowed:
            if url:
                raise _field_error(
                    "output_stream_url",
                    f"{self.output_type} takes no URL (leave it empty): "
                    + (
                        "the HLS is written under the engine's storage"
                        if self.output_type == "OUTPUT_TYPE_HLS"
                        else "nothing is sent"
                    ),
                )
        elif url:
            scheme = url_scheme(url)
            if scheme not in allowed:
                raise _field_error(
                    "output_stream_url",
                    f"{self.output_type} takes {' or '.join(s + '://' for s in allowed)} URLs, "
                    f"not {scheme}:",
                )
        elif not (self.output_type == "OUTPUT_TYPE_SRT_URL" and self.listen_port):
            raise _field_error("output_stream_url", f"{self.output_type} needs a URL")
        if self.listen_port and self.output_type != "OUTPUT_TYPE_SRT_URL":
            raise _field_error(
                "output_stream_listen_port", "only an SRT output can listen on a port"
            )
        if self.output_stream_key and self.output_type != "OUTPUT_TYPE_OTHER_RTMP_URL":
            raise _field_error("output_stream_key", "only an RTMP output takes a stream key")
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        no_port = {"output_stream_listen_port": {"not": {"type": "integer"}}}
        no_key = {"output_stream_key": {"const": ""}}
        branches = []
        for output_type, schemes in OUTPUT_SCHEMES.items():
            const = {"const": output_type}
            if not schemes:
                url = {"const": ""}
            elif output_type == "OUTPUT_TYPE_SRT_URL":
                url = {"pattern": f"^$|{url_pattern(schemes)}"}
            else:
                url = {"pattern": url_pattern(schemes)}
            properties = {"output_type": const, "output_stream_url": url}
            branch: dict[str, Any] = {"properties": properties}
            if output_type == "OUTPUT_TYPE_SRT_URL":  # a URL, or a port to listen on
                branch["anyOf"] = [
                    {"required": ["output_stream_url"],
                     "properties": {"output_stream_url": {"minLength": 1}}},
                    {"required": ["output_stream_listen_port"],
                     "properties": {"output_stream_listen_port": {"type": "integer"}}},
                ]  # fmt: skip
            else:
                properties.update(no_port)
                if schemes:
                    branch["required"] = ["output_stream_url"]
            if output_type != "OUTPUT_TYPE_OTHER_RTMP_URL":
                properties.update(no_key)
            branches.append(branch)
        return {"oneOf": branches}

    @property
    def listen_port(self) -> int | None:
        port = self.output_stream_listen_port
        return port if isinstance(port, int) and not isinstance(port, bool) else None

    @property
    def container(self) -> str:
        return OUTPUT_CONTAINER[self.output_type]

    @property
    def target_url(self) -> str:
        """Where FFmpeg sends this destination (HLS and DEV_NULL: ``""``, decided elsewhere)."""
        url = self.output_stream_url
        if self.output_type == "OUTPUT_TYPE_OTHER_RTMP_URL" and self.output_stream_key:
            return f"{url.rstrip('/')}/{self.output_stream_key}"
        if self.output_type == "OUTPUT_TYPE_SRT_URL" and self.listen_port:
            return f"srt://0.0.0.0:{self.listen_port}?mode=listener"
        return url


class RestreamIn(CrossFieldSchema):
    """Body of ``/api/restream/create`` (and of ``update``, with ``id``).

    At most one ``OUTPUT_TYPE_HLS`` destination; two SRT outputs never listen on one port.
    Processing must fit every destination's container (FLV: no H.265, Opus or AC-3, ...): a
    combination FFmpeg cannot run is a 400 naming the field."""

    model_config = ConfigDict(extra="forbid")

    restream_name: Name
    input: InputIn
    output: list[OutputIn] = Field(min_length=1, max_length=MAX_OUTPUTS)
    """One destination (the seed sends an object) or a list of up to eight."""
    transcoding: Transcoding = Field(default_factory=Transcoding)
    modify_audio: ModifyAudio = Field(default_factory=ModifyAudio)
    modify_video: ModifyVideo = Field(default_factory=ModifyVideo)
    overlay: Overlay = Field(default_factory=Overlay)
    active: StrictBool = False
    schedule: Schedule | None = None
    """When the job may run (one-off or weekly windows); None: whenever it is active."""

    @field_validator("output", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _processing_fits_outputs(self) -> RestreamIn:
        # One encode feeds every destination: it must fit each destination's container.
        for index, output in enumerate(self.output):
            try:
                check_processing(
                    transcoding=self.transcoding,
                    modify_audio=self.modify_audio,
                    modify_video=self.modify_video,
                    overlay=self.overlay,
                    output_format=output.container,
                )
            except ValueError as exc:
                raise ValueError(f"{exc} (output {index}: {output.output_type})") from exc
        hls = [o for o in self.output if o.output_type == "OUTPUT_TYPE_HLS"]
        if len(hls) > 1:
            raise _field_error("output", "at most one OUTPUT_TYPE_HLS destination per job")
        ports = [o.listen_port for o in self.output if o.listen_port]
        if len(ports) != len(set(ports)):
            raise _field_error("output", "two SRT outputs cannot listen on the same port")
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        hls = {"properties": {"output_type": {"const": "OUTPUT_TYPE_HLS"}}}
        one_hls = {"anyOf": [{"not": {"contains": hls}}, {"contains": hls, "maxContains": 1}]}
        return {"allOf": [{"properties": {"output": one_hls}}]}

    def config(self) -> dict[str, Any]:
        """The job's stored processing configuration (input and outputs are their own documents)."""
        return self.model_dump(mode="json", exclude={"input", "output"})


class RestreamUpdate(RestreamIn):
    """Body of ``/api/restream/update``: create's payload plus ``id``."""

    id: ObjectIdStr


FILTER_FIELDS = {"restream_name", "active", "_id", "id"}
"""Fields a ``getAll``/``getCount`` filter may name (equality only; no ``$`` operators)."""

SORT_FIELDS = {"created", "modified", "restream_name", "active"}


class RestreamListBody(ListQuery):
    """Body of ``getAll`` / ``getCount`` for restreams."""

    filter_fields = frozenset(FILTER_FIELDS)
    sort_fields = frozenset(SORT_FIELDS)
