"""Reusable ``Annotated`` types: the validation lives in the type (STYLE.md habit 3)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[str, StringConstraints(max_length=128), AfterValidator(_clean_name)]
"""A job or stream name a person typed: 1 to 128 printable characters."""

InputType = Literal[
    "INPUT_TYPE_SRT_URL",
    "INPUT_TYPE_RTMP_URL",
    "INPUT_TYPE_HLS_URL",
    "INPUT_TYPE_MPEG_DASH_URL",
    "INPUT_TYPE_RTSP_URL",
    "INPUT_TYPE_RTP_URL",
    "INPUT_TYPE_UDP_URL",
    "INPUT_TYPE_RIST_URL",
]

INPUT_SCHEMES: dict[str, tuple[str, ...]] = {
    "INPUT_TYPE_SRT_URL": ("srt",),
    "INPUT_TYPE_RTMP_URL": ("rtmp", "rtmps"),
    "INPUT_TYPE_HLS_URL": ("http", "https"),
    "INPUT_TYPE_MPEG_DASH_URL": ("http", "https"),
    "INPUT_TYPE_RTSP_URL": ("rtsp", "rtsps"),
    "INPUT_TYPE_RTP_URL": ("rtp",),
    "INPUT_TYPE_UDP_URL": ("udp",),
    "INPUT_TYPE_RIST_URL": ("rist",),
}
"""URL schemes each input type accepts. Nothing else (``file:``, ``concat:``, ...) ever is."""


def _stream_url(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if _CONTROL.search(value) or " " in value:
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if not parts.scheme or "://" not in value:
        raise ValueError("must be a URL like srt://host:port")
    if not parts.netloc:
        raise ValueError("must name a host and/or port")
    return value


StreamUrl = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_stream_url)]
"""A network stream URL (its scheme is checked against the input/output type elsewhere)."""

OptionalStreamUrl = Annotated[
    str, StringConstraints(max_length=2048), AfterValidator(lambda v: _stream_url(v) if v else v)
]
"""A :data:`StreamUrl` or ``""`` (for destinations that take no URL)."""


def url_scheme(url: str) -> str:
    """Lower-case scheme of ``url``."""
    return urlsplit(url).scheme.lower()


Kbps = Annotated[int, Field(gt=0, le=200_000)]
"""A bitrate in kbit/s."""


JSON_OBJECT_MAX_BYTES = 16 * 1024


def _storable(value: Any, depth: int = 0) -> None:
    if depth > 16:
        raise ValueError("nests too deep (at most 16 levels)")
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key:
                raise ValueError(f"key {key!r} is not allowed (no '$' prefix, no '.')")
            _storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, list):  # FerretDB stores no array directly inside an array
                raise ValueError("an array inside an array is not supported")
            _storable(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError("whole numbers must fit in 64 bits")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _storable(value)
    if len(json.dumps(value)) > JSON_OBJECT_MAX_BYTES:
        raise ValueError(f"must be at most {JSON_OBJECT_MAX_BYTES} bytes of JSON")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
"""A free-form JSON object the database can store as sent (``input_settings`` and the like):
keys without ``$``/``.``, no array directly in an array, 64-bit numbers, at most 16 KiB."""
