"""The janitor's cleanup request and pass report (``<p>.req.janitor.cleanup``, ``/api/storage``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reelhouse.common.contracts.base import BusMessage, Timestamp

DeleteReason = Literal["delete_after", "max_files", "max_bytes", "evicted", "purge"]


class CleanupRequest(BusMessage):
    """Ask a janitor to run a pass now; the reply is a :class:`PassReport`."""

    type: Literal["janitor_cleanup"] = "janitor_cleanup"


class RemovedFile(BaseModel):
    """One file record (and its file) a pass removed."""

    model_config = ConfigDict(extra="ignore")

    id: str
    job_id: str
    file_name: str
    size_bytes: int = 0
    reason: DeleteReason


class Orphan(BaseModel):
    """A file under a job's folder that no file record names."""

    model_config = ConfigDict(extra="ignore")

    path: str
    size_bytes: int
    removed: bool


class PassReport(BaseModel):
    """What one janitor pass did."""

    model_config = ConfigDict(extra="ignore")

    node: str
    started: Timestamp
    finished: Timestamp | None = None
    deleted: list[RemovedFile] = Field(default_factory=list)
    """Retention deletes (age, count, size) and purges of soft-deleted records."""
    missing: list[str] = Field(default_factory=list)
    """Ids of ``ready`` records whose file vanished (now ``failed``, reason ``missing``)."""
    orphans: list[Orphan] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    """Problems met (the pass goes on past them)."""

    @property
    def bytes_freed(self) -> int:
        return sum(f.size_bytes for f in self.deleted) + sum(
            o.size_bytes for o in self.orphans if o.removed
        )
