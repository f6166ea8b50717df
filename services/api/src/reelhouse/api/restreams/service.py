"""The Restreams module's behaviour: its job kind (a job writes to the storage only with an HLS
output), jobs as responses show them, a create/update body as the job's config and linked
documents. What recordings share with it is in :mod:`reelhouse.api.jobs.service`.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.jobs import service as jobs
from reelhouse.api.jobs.service import JobKind
from reelhouse.common.contracts.restream import RestreamIn
from reelhouse.common.mongo import Collections

FILE_OUTPUT_TYPES = frozenset({"OUTPUT_TYPE_HLS"})
"""Output types written under the storage root: refused while the disk is critical."""


def writes_files(output_types: list[str]) -> bool:
    """A restream writes to the storage only through an output of a :data:`FILE_OUTPUT_TYPES`
    type."""
    return any(t in FILE_OUTPUT_TYPES for t in output_types)


MODULE_NAME = "MODULE_RESTREAM"

_JOB_FIELDS = (
    "restream_name", "input", "output", "transcoding", "modify_audio", "modify_video", "overlay",
    "active", "module_name", "schedule", "schedule_next_start", "schedule_next_stop",
)  # fmt: skip
KIND = JobKind(
    module="restream",
    service="restreamer",
    collection=Collections.RESTREAMS,
    fields=_JOB_FIELDS,
    links={"input": Collections.INPUTS, "output": Collections.OUTPUTS},
    writes_files=writes_files,
)


async def populate(
    db: AsyncDatabase, found: list[dict[str, Any]], live: Any = None
) -> list[dict[str, Any]]:
    linked = await jobs.fetch_linked(db, KIND, found)
    return [jobs.present_job(KIND, job, linked, live=live) for job in found]


async def load_populated(
    db: AsyncDatabase, tenant: str, job_id: str, live: Any = None
) -> dict[str, Any]:
    return (await populate(db, [await jobs.load(db, KIND, tenant, job_id)], live))[0]


def job_config(body: RestreamIn) -> dict[str, Any]:
    return {**body.config(), "module_name": MODULE_NAME}


def linked_docs(body: RestreamIn) -> dict[str, list[Any]]:
    return {"input": [body.input], "output": list(body.output)}
