"""A worker node: claims jobs by lease, runs them, renews, stops, fails over (ARCHITECTURE §2).

The recorder and the restreamer are both a :class:`JobNode`; each only says how to turn a claimed
job document into a running :class:`JobRun`. One loop reconciles desired state (MongoDB) with what
this node runs:

- every ``lease_s / 3`` it renews the leases of all the jobs it runs in one round trip; a job
  whose renewal matches nothing (stopped, removed, updated, restarted, taken over) has its FFmpeg
  stopped at once. The runtime block's other fields are written by the run when its worker's
  state changes, not on every renewal;
- every ``reconcile_s``, and at once on a NATS hint, it claims claimable jobs while it runs fewer
  than ``max_jobs``; on a hint it first waits ``claim_delay_s * load`` so that the least loaded
  node wins the claim.

Hints arrive on ``<p>.cmd.<service>.*`` to every node of the service (fan-out, not a queue group:
the owner of a job must hear a stop or a restart, and a claim race is settled by MongoDB
atomically).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any, Protocol

from pydantic import ValidationError

from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.service import ServiceContext
from reelhouse.common.settings import WorkerSettings
from reelhouse.common.subjects import Module

__all__ = ["InvalidJob", "JobNode", "JobRun"]


class InvalidJob(ValueError):
    """The stored job no longer makes a valid configuration (it is marked failed, not retried)."""


class JobRun(Protocol):
    """One claimed job as the node sees it."""

    job_id: str
    lease: Lease

    @property
    def stopping(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, reason: str) -> None: ...


class JobNode(ABC):
    """Everything one worker process runs for one kind of job."""

    module: Module
    """The jobs' module name in hints, stats and events (``recording``, ``restream``)."""
    service: str
    """The service whose command subject carries the hints (``recorder``, ``restreamer``)."""
    collection: str
    """The jobs' collection."""
    claim_where: dict[str, Any] | None = None
    """Extra conditions a claimable document must meet (the prober: rows with a URL)."""

    def __init__(self, ctx: ServiceContext[Any]) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.log = ctx.log
        self.leases = LeaseStore(
            db=ctx.db, collection=self.collection, node_id=ctx.node_id, lease_s=self.lease_s
        )
        self.runs: dict[str, JobRun] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._hinted: set[str] = set()

    # Worker services read these from WorkerSettings; another service may map its own settings.
    @property
    def lease_s(self) -> float:
        return float(self.settings.lease_s)

    @property
    def max_jobs(self) -> int:
        return int(self.settings.max_jobs)

    @property
    def reconcile_s(self) -> float:
        return float(self.settings.reconcile_s)

    @property
    def claim_delay_s(self) -> float:
        return float(self.settings.claim_delay_s)

    async def prepare(self) -> None:
        """Before the first claim (workers create their storage folder)."""
        if isinstance(self.settings, WorkerSettings):
            self.settings.storage_root.mkdir(parents=True, exist_ok=True)

    async def can_claim(self) -> bool:
        """Whether this node may claim another job now (the recorder: not while the disk is
        critical). Consulted before each claim; running jobs are not affected."""
        return True

    @abstractmethod
    async def make_run(self, lease: Lease) -> JobRun:
        """The run of a freshly claimed job; raise :class:`InvalidJob` if it cannot be run."""

    async def run(self) -> None:
        """Serve until the service is asked to stop; then stop every FFmpeg gracefully."""
        await self.prepare()
        hints = asyncio.create_task(self._subscribe(), name="hints")
        try:
            await self._loop()
        finally:
            hints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints
            await self._stop_all(f"{self.service} shutting down")

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self.lease_s / 3
        next_renew = loop.time() + renew_every
        while not self.ctx.stop.is_set():
            hinted = self._wake.is_set()
            self._wake.clear()
            if hinted:
                await self._check_hinted()
            if loop.time() >= next_renew:
                await self._renew_all()
                next_renew = loop.time() + renew_every
            if hinted:
                await self._claim_delay()
            await self._claim()
            self.ctx.node.running_jobs = len(self.runs)
            timeout = min(self.reconcile_s, max(0.0, next_renew - loop.time()))
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.ctx.stop.wait()),
            }
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    async def _claim_delay(self) -> None:
        load = len(self.runs) / self.max_jobs
        if load > 0 and self.claim_delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), self.claim_delay_s * load)

    async def _claim(self) -> None:
        while len(self.runs) < self.max_jobs and not self.ctx.stop.is_set():
            if not await self.can_claim():
                return
            try:
                lease = await self.leases.claim(where=self.claim_where)
            except Exception as exc:
                self.log.warning("claim_failed", error=str(exc).splitlines()[0][:200])
                return
            if lease is None:
                return
            await self._start(lease)

    async def _start(self, lease: Lease) -> None:
        job_id = str(lease.job_id)
        try:
            run = await self.make_run(lease)
        except (InvalidJob, ValidationError) as exc:
            # Stored config that no longer validates: report it, do not spin on it.
            self.log.error(f"{self.module}_config_invalid", job_id=job_id, error=str(exc)[:500])
            await self.ctx.db[self.collection].update_one(
                {"_id": lease.job_id, "runtime.node": self.ctx.node_id},
                {"$set": {"active": False, "runtime.state": "failed",
                          "runtime.last_error": f"invalid configuration: {exc}"[:2000]}},
            )  # fmt: skip
            await self.leases.release(lease.job_id)
            return
        except Exception as exc:
            # MongoDB away while loading: give the job back; the next pass retries.
            self.log.warning(f"{self.module}_load_failed", job_id=job_id, error=str(exc)[:200])
            with contextlib.suppress(Exception):
                await self.leases.release(lease.job_id)
            return
        self.runs[job_id] = run
        self.log.info(f"{self.module}_claimed", job_id=job_id, generation=lease.generation)
        try:
            await run.start()
        except Exception as exc:
            self.log.exception(f"{self.module}_start_failed", job_id=job_id)
            self._begin_stop(run, f"could not start: {exc}")

    async def _renew_all(self) -> None:
        """One round trip renews every running job's lease; stopping jobs keep theirs by hold."""
        running = [run for run in self.runs.values() if not run.stopping]
        try:
            lost = await self.leases.renew_many([run.lease for run in running])
        except Exception as exc:
            # MongoDB away: keep running; the lease protocol settles it when it is back.
            self.log.warning("lease_renew_failed", jobs=len(running), error=str(exc)[:200])
        else:
            for run in running:
                if run.lease.job_id in lost:
                    self._begin_stop(run, "job stopped, changed or taken over")
        for run in list(self.runs.values()):
            if run.stopping and run not in running:
                try:
                    await self.leases.hold(run.lease)
                except Exception as exc:
                    self.log.warning("lease_hold_failed", job_id=run.job_id, error=str(exc)[:200])

    async def _check_hinted(self) -> None:
        """A hint named jobs this node runs: find out at once which of them must stop."""
        hinted, self._hinted = self._hinted, set()
        runs = [r for r in (self.runs.get(j) for j in hinted) if r is not None and not r.stopping]
        if not runs:
            return
        try:
            lost = await self.leases.renew_many([run.lease for run in runs])
        except Exception as exc:
            # The periodic renewal finds it out instead, at most lease/3 later.
            self.log.warning("lease_check_failed", jobs=len(runs), error=str(exc)[:200])
            return
        for run in runs:
            if run.lease.job_id in lost:
                self._begin_stop(run, "job stopped, changed or restarted")

    def stop_run(self, run: JobRun, reason: str) -> None:
        """Stop one run now (it found out itself that its job is no longer its own)."""
        if not run.stopping:
            self._begin_stop(run, reason)

    def _begin_stop(self, run: JobRun, reason: str) -> None:
        async def stop() -> None:
            try:
                await run.stop(reason)
            finally:
                if self.runs.get(run.job_id) is run:
                    del self.runs[run.job_id]
                self.ctx.node.running_jobs = len(self.runs)
                self._wake.set()  # the job may be claimable again (restart, update)

        task = asyncio.create_task(stop(), name=f"stop-{run.job_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_all(self, reason: str) -> None:
        for run in list(self.runs.values()):
            if not run.stopping:
                self._begin_stop(run, reason)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    # -- hints --------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        bus = self.ctx.bus
        while not await bus.wait_connected(timeout=1.0):
            if self.ctx.stop.is_set():
                return

        async def on_hint(msg: Any) -> None:
            try:
                command = JobCommand.model_validate_json(msg.data)
            except ValidationError:
                self.log.warning("hint_invalid", subject=msg.subject)
                return
            if command.module == self.module:
                self._hinted.add(command.job_id)
                self._wake.set()

        sub = await bus.nc.subscribe(bus.subjects.commands(self.service), cb=on_hint)
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
