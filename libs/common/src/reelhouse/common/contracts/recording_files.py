"""Bodies of the recorded-file endpoints: ``getFiles``, ``getDownloadUrl``, ``archiveFile``.

Every field is typed (no free-form filters), so no ``$`` operator can reach a query.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.types import whole_int

FileStatus = Literal[
    "recording", "processing", "ready", "archiving", "archived", "failed", "deleted"
]
"""A file record's status (docs/ARCHITECTURE.md §5); ``archiving`` while ``archiveFile`` runs."""


class FilesQuery(BaseModel):
    """Body of ``/api/recording/getFiles``: filters on the caller's files, newest first."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    record_id: ObjectIdStr | None = None
    status: FileStatus | None = None
    from_: datetime | None = Field(None, alias="from", description="Created at or after (ISO).")
    to: datetime | None = Field(None, description="Created before (ISO).")
    limit: whole_int(ge=1, le=1000) = 50
    offset: whole_int(ge=0, le=2**31 - 1) = 0  # MongoDB skip: int32 is plenty

    @field_validator("from_", "to")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> FilesQuery:
        if self.from_ is not None and self.to is not None and self.to <= self.from_:
            raise ValueError("@to: must be later than from")
        return self


class FileRef(BaseModel):
    """``{record_id, file_id}``: getDownloadUrl, archiveFile."""

    model_config = ConfigDict(extra="forbid")

    record_id: ObjectIdStr
    file_id: ObjectIdStr
