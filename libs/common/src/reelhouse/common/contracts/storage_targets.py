"""Storage targets (issue 24): S3-compatible buckets that recordings are uploaded to.

Bodies of ``POST /api/storage-targets/<method>``. Every constraint is a JSON-schema one (a
pattern, an enum, a length), so the OpenAPI document is the validators' own; the one rule a
schema cannot state is the URL policy of ``endpoint_url`` (:mod:`reelhouse.common.netpolicy`),
answered as a 400 with ``reason: forbidden_address``. Credentials are write-only: they are
sealed at rest and never part of an answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.types import Name

Provider = Literal["s3", "r2", "b2", "wasabi", "other"]
"""Whose storage it is; informational (every provider is spoken to as S3)."""

StorageClass = Literal[
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "GLACIER_IR",
    "DEEP_ARCHIVE", "REDUCED_REDUNDANCY",
]  # fmt: skip
"""S3 storage classes an object may be written (or archived) with."""

ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
"""``http(s)://host[:port]``: an S3 endpoint is a host, never a path or user info."""

EndpointUrl = Annotated[str, StringConstraints(max_length=300, pattern=ENDPOINT_PATTERN)]
Bucket = Annotated[
    str, StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
]
"""An S3 bucket name (lower case letters, digits, dots and dashes; 3 to 63)."""
Prefix = Annotated[str, StringConstraints(max_length=256, pattern=r"^[A-Za-z0-9_.=/-]*$")]
"""Where in the bucket the objects go (``recordings/``); slashes at either end are ignored."""
Region = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
KeyText = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
"""An access key id or secret: printable ASCII, no spaces."""


class StorageTargetIn(BaseModel):
    """Body of ``/api/storage-targets/create``."""

    model_config = ConfigDict(extra="forbid")

    storage_name: Name
    provider: Provider = "s3"
    endpoint_url: EndpointUrl
    region: Region = "us-east-1"
    bucket: Bucket
    prefix: Prefix = ""
    path_style: StrictBool = False
    """Address the bucket as ``<endpoint>/<bucket>`` (most self-hosted servers) instead of
    ``<bucket>.<endpoint>`` (AWS's default)."""
    storage_class: StorageClass | None = None
    """The class uploads are written with; None: the bucket's default."""
    access_key_id: KeyText = Field(description="Write-only: never returned.")
    secret_access_key: KeyText = Field(description="Write-only: never returned.")

    def stored(self) -> dict[str, object]:
        """The document's plain fields (the credentials are sealed apart)."""
        return self.model_dump(mode="json", exclude={"access_key_id", "secret_access_key", "id"})


class StorageTargetUpdate(StorageTargetIn):
    """Body of ``/api/storage-targets/update``: create's fields plus ``id``; the credentials may
    be left out to keep the stored ones."""

    id: ObjectIdStr
    access_key_id: KeyText | None = Field(None, description="Write-only; omit to keep.")
    secret_access_key: KeyText | None = Field(None, description="Write-only; omit to keep.")


class StorageTargetRef(BaseModel):
    """``{"id": ...}`` of getById, remove and test."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr


UploadState = Literal["pending", "uploading", "uploaded", "failed"]
"""A file record's ``upload.state``."""

TestFailure = Literal[
    "auth", "no_bucket", "denied", "unreachable", "timeout", "forbidden_address", "error"
]
"""What ``test`` (and a failed upload) reports instead of the remote server's words."""
