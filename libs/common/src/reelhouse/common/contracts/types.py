"""Reusable ``Annotated`` types: the validation lives in the type (STYLE.md habit 3)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# -- what the JSON schema says -------------------------------------------------------------------
# A validator that checks more than its annotated type shows (strip, then "not empty", a URL's
# parts, a scheme per input type) would leave the OpenAPI document promising more than the API
# accepts. Each such type below carries the pattern of what it accepts, in ECMA-262 syntax that
# Python's ``re`` reads the same way; where a rule cannot be a pattern, the pattern describes a
# subset of what is accepted, never more (issue 20, item 6).

TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
"""No control characters."""

NUL_FREE_PATTERN = r"^[^\x00]*$"
"""No NUL character: the least every stored or queried string must meet (PostgreSQL, under
FerretDB, refuses ``\u0000`` in any text, stored or compared: an internal error, not a 400)."""

NUL_FREE = StringConstraints(pattern=NUL_FREE_PATTERN)
"""The constraint of :data:`NUL_FREE_PATTERN` (schema and validation) for a field's type:
``Annotated[str, NUL_FREE]`` or ``Annotated[str, NUL_FREE, Field(max_length=...)]``."""

NulFreeText = Annotated[str, NUL_FREE]
"""Free text that is stored or used in a query: anything but NUL (:data:`NUL_FREE_PATTERN`)."""

REQUIRED_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f]*$"
"""No control characters and something besides white space (a value is stripped first)."""

_URL_USERINFO = r"[A-Za-z0-9._~%!$&'()*+,;=:-]*@"
_URL_HOST = r"[A-Za-z0-9._~-]+"
_URL_PORT = r":[0-9]{1,5}"
_URL_REST = r"[/?#][^\s\x00-\x1f\x7f]*"


def url_pattern(schemes: tuple[str, ...] | None = None, *, host_required: bool = False) -> str:
    """The pattern of a stream URL with one of ``schemes`` (None: any scheme): ``scheme://``,
    a host and/or a port (optionally after user info), then a path, query or fragment without
    white space; with ``host_required``, not a port alone. IPv6 literals (``srt://[::1]:9000``)
    are accepted too, but not shown: a pattern that admits every valid one admits invalid ones."""
    scheme = "|".join(schemes) if schemes else "[a-z][a-z0-9+.-]*"
    hostport = f"{_URL_HOST}(?:{_URL_PORT})?"
    netloc = f"(?:{_URL_USERINFO})?" + (
        hostport if host_required else f"(?:{hostport}|{_URL_PORT})"
    )
    return f"^(?:{scheme})://{netloc}(?:{_URL_REST})?$"


def string_schema(*, pattern: str, max_length: int, description: str = "") -> WithJsonSchema:
    """The JSON schema of a validated string type (its pattern and length)."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length, "pattern": pattern}
    if description:
        schema["description"] = description
    return WithJsonSchema(schema)


def _clean_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[
    str,
    StringConstraints(max_length=128),
    AfterValidator(_clean_name),
    string_schema(pattern=REQUIRED_TEXT_PATTERN, max_length=128),
]
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
    "INPUT_TYPE_SRT_SERVER",
    "INPUT_TYPE_RTMP_SERVER",
]

INGEST_INPUT_TYPES: dict[str, str] = {
    "INPUT_TYPE_SRT_SERVER": "MODULE_SRT_SERVERS",
    "INPUT_TYPE_RTMP_SERVER": "MODULE_RTMP_SERVERS",
}
"""Input types read from the engine's own ingest servers (docs/INGEST.md) → the stream rows'
``module_name``. The input names the server (``input_module_id``) and its publisher stream row
(``input_stream_id``); the engine builds the reader URL (the ingest fan-out, SRT), so
``input_stream_url`` is optional and never read."""

INPUT_SCHEMES: dict[str, tuple[str, ...]] = {
    "INPUT_TYPE_SRT_URL": ("srt",),
    "INPUT_TYPE_RTMP_URL": ("rtmp", "rtmps"),
    "INPUT_TYPE_HLS_URL": ("http", "https"),
    "INPUT_TYPE_MPEG_DASH_URL": ("http", "https"),
    "INPUT_TYPE_RTSP_URL": ("rtsp", "rtsps"),
    "INPUT_TYPE_RTP_URL": ("rtp",),
    "INPUT_TYPE_UDP_URL": ("udp",),
    "INPUT_TYPE_RIST_URL": ("rist",),
    # Ingest inputs are read as SRT from the fan-out point, whatever the contribution's protocol.
    "INPUT_TYPE_SRT_SERVER": ("srt",),
    "INPUT_TYPE_RTMP_SERVER": ("srt", "rtmp"),
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


StreamUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_stream_url),
    string_schema(pattern=url_pattern(), max_length=2048),
]
"""A network stream URL (its scheme is checked against the input/output type elsewhere)."""

OptionalStreamUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(lambda v: _stream_url(v) if v else v),
    string_schema(pattern=f"^$|{url_pattern()}", max_length=2048),
]
"""A :data:`StreamUrl` or ``""`` (for destinations that take no URL)."""


def url_scheme(url: str) -> str:
    """Lower-case scheme of ``url``."""
    return urlsplit(url).scheme.lower()


def _whole_float(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeInt = Annotated[StrictInt, BeforeValidator(_whole_float)]
"""A whole number as JSON schema's ``integer`` means it: ``3`` or ``3.0``, never ``"3"`` or
``true`` (pydantic's ``StrictInt`` refuses ``3.0``, which the spec's ``integer`` allows)."""


def whole_int(*, ge: int, le: int) -> Any:
    """A :data:`WholeInt` from ``ge`` to ``le`` (the bounds go inside the validator, so the
    schema shows them as ``minimum``/``maximum``)."""
    return Annotated[StrictInt, Field(ge=ge, le=le), BeforeValidator(_whole_float)]


Kbps = Annotated[int, Field(gt=0, le=200_000)]
"""A bitrate in kbit/s."""


JSON_OBJECT_MAX_BYTES = 16 * 1024


def _storable(value: Any, depth: int = 0, at: str = "") -> None:
    """Refuse what the database cannot store as sent; ``at`` is the path inside the field
    (``a.b[0]``), named in the message."""
    where = f" (at {at})" if at else ""
    if depth > 16:
        raise ValueError(f"nests too deep (at most 16 levels){where}")
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                raise ValueError(
                    f"key {key!r} is not allowed (no '$' prefix, no '.', no NUL){where}"
                )
            _storable(item, depth + 1, f"{at}.{key}" if at else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):  # FerretDB stores no array directly inside an array
                raise ValueError(f"an array inside an array is not supported{where}")
            _storable(item, depth + 1, f"{at}[{index}]")
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"strings must not contain the NUL character{where}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError(f"whole numbers must fit in 64 bits{where}")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _storable(value)
    if len(json.dumps(value)) > JSON_OBJECT_MAX_BYTES:
        raise ValueError(f"must be at most {JSON_OBJECT_MAX_BYTES} bytes of JSON")
    return value


SAFE_INT = 2**53 - 1
"""The whole numbers a schema shows (the spec's numbers are doubles; 64-bit ones are accepted)."""

JSON_KEY_PATTERN = r"^[^$.\x00][^.\x00]*$"
"""An object key the database stores as sent: no ``$`` first, no ``.``, no NUL."""

_JSON_SCALAR: list[dict[str, Any]] = [
    {"type": "string", "pattern": NUL_FREE_PATTERN},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "integer", "minimum": -SAFE_INT, "maximum": SAFE_INT},
    {"type": "number", "not": {"type": "integer"}},
]


def json_object_schema(*, levels: int = 3, description: str = "") -> dict[str, Any]:
    """The JSON schema of a stored free-form object: keys without ``$``/``.``/NUL, strings
    without NUL, no array directly in an array, 64-bit whole numbers. It spells out ``levels``
    of nesting (deeper objects are accepted, up to the type's own limit); the size limit, in
    bytes of JSON, is in the description, as a schema cannot count bytes."""
    inner: dict[str, Any] | None = None
    for _ in range(levels):
        element = [*_JSON_SCALAR, *([inner] if inner else [])]
        inner = {
            "type": "object",
            "propertyNames": {"pattern": JSON_KEY_PATTERN},
            "additionalProperties": {
                "anyOf": [*element, {"type": "array", "items": {"anyOf": element}}]
            },
        }
    assert inner is not None
    return {**inner, "description": description} if description else inner


JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_json_object),
    WithJsonSchema(
        json_object_schema(
            description="A JSON object, at most 16 KiB and 16 levels deep; keys without a "
            "leading '$', '.' or NUL; strings without NUL; no array directly inside an array; "
            "64-bit whole numbers."
        )
    ),
]
"""A free-form JSON object the database can store as sent (``input_settings`` and the like):
keys without ``$``/``.``/NUL, strings without NUL (anywhere nested), no array directly in an
array, 64-bit numbers, at most 16 KiB."""
