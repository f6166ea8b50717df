"""The recorder node: a :class:`~reelhouse.common.jobs.node.JobNode` for recording jobs.

It claims no job while the storage disk is past its critical watermark (docs/DECISIONS.md "Disk
watermarks"); jobs it already runs go on.
"""

from __future__ import annotations

import asyncio

from reelhouse.common.jobs.lease import Lease
from reelhouse.common.jobs.node import InvalidJob, JobNode
from reelhouse.common.mongo import Collections
from reelhouse.recorder.job import RecordingRun, recording_config


class RecorderNode(JobNode):
    """Claims recording jobs by lease and runs one :class:`RecordingRun` for each."""

    module = "recording"
    service = "recorder"
    collection = Collections.RECORDINGS

    _disk_refusing: bool = False

    async def can_claim(self) -> bool:
        """No new job while the disk is critical; logged once each time that changes."""
        try:
            disk = await asyncio.to_thread(self.settings.disk_state)
        except OSError as exc:
            self.log.warning("disk_check_failed", error=str(exc)[:200])
            return True  # the job fails visibly if it cannot write; do not go silent
        refusing = disk.level == "critical"
        if refusing != self._disk_refusing:
            self._disk_refusing = refusing
            if refusing:
                self.log.warning(
                    "claim_refused_disk_critical",
                    used_pct=round(disk.used_pct, 1),
                    critical_pct=disk.critical_pct,
                    free_bytes=disk.free,
                )
            else:
                self.log.info("claim_resumed_disk_ok", used_pct=round(disk.used_pct, 1))
        return not refusing

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
