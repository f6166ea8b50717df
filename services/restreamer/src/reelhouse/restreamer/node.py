"""The restreamer node: a :class:`~reelhouse.common.jobs.node.JobNode` for restream jobs."""

from __future__ import annotations

from reelhouse.common.jobs.lease import Lease
from reelhouse.common.jobs.node import InvalidJob, JobNode
from reelhouse.common.mongo import Collections
from reelhouse.restreamer.job import RestreamRun, restream_config


class RestreamerNode(JobNode):
    """Claims restream jobs by lease and runs one :class:`RestreamRun` for each."""

    module = "restream"
    service = "restreamer"
    collection = Collections.RESTREAMS

    async def make_run(self, lease: Lease) -> RestreamRun:
        db = self.ctx.db
        input_ids = lease.doc.get("input") or []
        output_ids = lease.doc.get("output") or []
        if not input_ids or not output_ids:
            raise InvalidJob("the job has no input or no output")
        input_doc = await db[Collections.INPUTS].find_one({"_id": input_ids[0]})
        if input_doc is None:
            raise InvalidJob("the job's input document is missing")
        found = {
            d["_id"]: d async for d in db[Collections.OUTPUTS].find({"_id": {"$in": output_ids}})
        }
        missing = [str(i) for i in output_ids if i not in found]
        if missing:
            raise InvalidJob(f"output documents missing: {', '.join(missing)}")
        return RestreamRun(
            lease=lease,
            config=restream_config(lease.doc, input_doc, [found[i] for i in output_ids]),
            output_ids=list(output_ids),
            leases=self.leases,
            bus=self.ctx.bus,
            settings=self.settings,
            node_id=self.ctx.node_id,
        )
