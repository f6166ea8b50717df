"""Base models and reusable ``Annotated`` types shared by every contract.

API documents follow the seeds: 24-hex ObjectId strings in both ``_id`` and ``id``, ``created`` and
``modified`` timestamps written as ``2026-03-24T12:00:00.000Z``, and ``success: true`` on model
responses. Bus messages carry ``type`` and ``version`` and ignore unknown fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from bson import ObjectId
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    computed_field,
)


def _object_id_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, ObjectId) else value


ObjectIdStr = Annotated[
    str,
    BeforeValidator(_object_id_to_str),
    StringConstraints(pattern=r"^[0-9a-f]{24}$"),
    # The before-validator hides the pattern from the request schema; the spec must show it.
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{24}$"}),
]
"""A MongoDB ObjectId as 24 lowercase hex characters."""


def format_timestamp(value: datetime) -> str:
    """``2026-03-24T12:00:00.000Z``: UTC, milliseconds, ``Z`` (as the seeds show)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]
"""A datetime serialised the way the seeds show it."""


def utcnow() -> datetime:
    """Now, timezone-aware UTC, truncated to milliseconds (what MongoDB stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_object_id() -> ObjectId:
    """A fresh ObjectId."""
    return ObjectId()


def is_object_id(value: str) -> bool:
    """True when ``value`` is a 24-hex ObjectId string."""
    return isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value)


class ApiDocument(BaseModel):
    """A stored object as the API returns it: ``_id`` and ``id``, timestamps, ``success``."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    object_id: ObjectIdStr = Field(alias="_id")
    created: Timestamp
    modified: Timestamp

    @computed_field  # type: ignore[prop-decorator]
    @property
    def id(self) -> str:
        """Convenience alias for ``_id``."""
        return self.object_id

    @computed_field  # type: ignore[prop-decorator]
    @property
    def success(self) -> bool:
        """The seeds' virtual ``success: true`` on model responses."""
        return True

    def to_api(self) -> dict[str, Any]:
        """JSON-ready dict in the seeds' field names (``_id`` first, then ``id``)."""
        data = self.model_dump(mode="json", by_alias=True)
        return {"_id": data.pop("_id"), "id": data.pop("id"), **data}


class BusMessage(BaseModel):
    """Base of every NATS payload: a ``type`` and a ``version``; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    type: str
    version: int = 1
