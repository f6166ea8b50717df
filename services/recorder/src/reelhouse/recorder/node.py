"""The recorder node: a :class:`~reelhouse.common.jobs.node.JobNode` for recording jobs.

It claims no job while the storage disk is past its critical watermark (docs/DECISIONS.md "Disk
watermarks"); jobs it already runs go on.

Beside the jobs it runs, every ``reconcile_s`` it finishes files nobody else will: a job that is
stopped or paused while it still has parts in ``recording`` (its owner died, or it was stopped
while paused) is owned idle (:meth:`LeaseStore.claim_idle`) and its parts closed and its ended
sessions joined; and it takes ``reprocessFile`` requests (:mod:`reelhouse.recorder.processing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bson import ObjectId

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.files import MODULE_RECORDINGS
from reelhouse.common.jobs.lease import SCAN_FIELDS, Lease, idle_claimable
from reelhouse.common.jobs.node import InvalidJob, JobNode
from reelhouse.common.mongo import Collections
from reelhouse.recorder.job import RecordingRun, recording_config
from reelhouse.recorder.processing import Reprocessor


class RecorderNode(JobNode):
    """Claims recording jobs and runs one :class:`RecordingRun` for each."""

    module = "recording"
    service = "recorder"
    collection = Collections.RECORDINGS

    _disk_refusing: bool = False

    async def run(self) -> None:
        finisher = asyncio.create_task(self._finish_loop(), name="finisher")
        try:
            await super().run()
        finally:
            finisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finisher

    async def _finish_loop(self) -> None:
        reprocessor = Reprocessor(
            db=self.ctx.db, bus=self.ctx.bus, settings=self.settings, node_id=self.ctx.node_id
        )
        while not self.ctx.stop.is_set():
            try:
                unfinished = await self._unfinished_files()
                await self.finish_idle_jobs(unfinished)
                if any(Reprocessor.claimable(doc, utcnow()) for doc in unfinished):
                    await reprocessor.run_pending()
            except Exception as exc:
                self.log.warning("finisher_failed", error=str(exc).splitlines()[0][:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), self.reconcile_s)

    async def _unfinished_files(self) -> list[dict[str, Any]]:
        """The pass's one read of the file records: every part still ``recording`` or
        ``processing`` (one per running job, and what is left to finish or reprocess). FerretDB
        reads the whole collection for each query, so the finisher and the reprocessor share it."""
        cursor = self.ctx.db[Collections.FILES].find(
            {"module_name": MODULE_RECORDINGS, "status": {"$in": ["recording", "processing"]}},
            {"entity_id": 1, "status": 1, "reprocess": 1, "reprocess_until": 1},
        )
        return await cursor.to_list(None)

    async def finish_idle_jobs(self, unfinished: list[dict[str, Any]]) -> None:
        """Finish the files of stopped or paused jobs that still have unfinished parts (of the
        file records ``unfinished``)."""
        pending = {
            doc["entity_id"] for doc in unfinished
            if doc.get("reprocess") is not True and isinstance(doc.get("entity_id"), str)
            and doc["entity_id"] not in self.runs and ObjectId.is_valid(doc["entity_id"])
        }  # fmt: skip
        if not pending:
            return
        # Most are jobs that run on another node (its parts are open): one read tells which
        # may be leased idle, instead of a refused claim per job.
        idle = (
            await self.ctx.db[self.collection]
            .find({"_id": {"$in": [ObjectId(j) for j in pending]}}, SCAN_FIELDS)
            .to_list(None)
        )
        now = utcnow()
        owned = self.leases.owned_ids()
        for job in idle:
            if self.ctx.stop.is_set():
                return
            if not idle_claimable(job, now, owned):
                continue  # running (its owner finishes it) or owned
            job_id = str(job["_id"])
            lease = await self.leases.claim_idle(job["_id"], job.get("tenant"))
            if lease is None:
                continue  # taken since the read
            try:
                run = await self.make_run(lease)
                self.log.info("recording_finishing", job_id=job_id)
                await run.finish_idle()
            except Exception as exc:
                self.log.warning("recording_finish_failed", job_id=job_id, error=str(exc)[:300])
            finally:
                await self.leases.release(lease)

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
