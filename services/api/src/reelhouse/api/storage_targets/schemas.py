"""Answers of ``/api/storage-targets/*`` (the request bodies are in
:mod:`reelhouse.common.contracts.storage_targets`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from reelhouse.common.contracts.storage_targets import Provider, StorageClass, TestFailure


class StorageTargetOut(BaseModel):
    """A storage target as the API shows it: never its credentials."""

    id: str
    storage_name: str
    provider: Provider
    endpoint_url: str
    region: str
    bucket: str
    prefix: str
    path_style: bool
    storage_class: StorageClass | None = None
    credentials_set: bool = Field(description="Whether keys are stored (they are never shown).")
    created: str
    modified: str


class StorageTestResult(BaseModel):
    """``test``: whether the bucket is reachable and writable, and if not, what failed."""

    ok: bool
    failure: TestFailure | None = Field(
        None,
        description="`auth` (keys refused), `no_bucket`, `denied` (keys without the right), "
        "`unreachable`, `timeout` or `error`; never the remote server's words.",
    )
    elapsed_ms: int


class Removed(BaseModel):
    success: bool
    id: str
