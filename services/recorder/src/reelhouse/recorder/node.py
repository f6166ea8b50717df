"""The recorder node: a :class:`~reelhouse.common.jobs.node.JobNode` for recording jobs."""

from __future__ import annotations

from reelhouse.common.jobs.lease import Lease
from reelhouse.common.jobs.node import InvalidJob, JobNode
from reelhouse.common.mongo import Collections
from reelhouse.recorder.job import RecordingRun, recording_config


class RecorderNode(JobNode):
    """Claims recording jobs by lease and runs one :class:`RecordingRun` for each."""

    module = "recording"
    service = "recorder"
    collection = Collections.RECORDINGS

    async def make_run(self, lease: Lease) -> RecordingRun:
        input_ids = lease.doc.get("input") or []
        if not input_ids:
            raise InvalidJob("the job has no input")
        input_doc = await self.ctx.db[Collections.INPUTS].find_one({"_id": input_ids[0]})
        if input_doc is None:
            raise InvalidJob("the job's input document is missing")
        return RecordingRun(
            lease=lease,
            config=recording_config(lease.doc, input_doc),
            leases=self.leases,
            db=self.ctx.db,
            bus=self.ctx.bus,
            settings=self.settings,
            node_id=self.ctx.node_id,
        )
