"""A worker node: claims jobs by lease, runs them, renews, stops, fails over (ARCHITECTURE §2).

The recorder and the restreamer are both a :class:`JobNode`; each only says how to turn a claimed
job document into a running :class:`JobRun`. One loop reconciles desired state (MongoDB) with what
this node runs:

- every ``lease_s / 3`` it renews the leases of all the jobs it runs in one round trip; a job
  whose renewal matches nothing (stopped, removed, updated, restarted, taken over) has its FFmpeg
  stopped at once. The runtime block's other fields are written by the run when its worker's
  state changes, not on every renewal;
- every ``reconcile_s`` it reads the job collection once (:meth:`LeaseStore.scan`: the
  scheduled jobs and those whose lease is free) and, if that shows a job to claim, or at once on
  a NATS hint, claims claimable jobs while it runs fewer than ``max_jobs``; on a hint it first
  waits ``claim_delay_s * load`` so that the least loaded node wins the claim. The same read
  drives the schedule windows (:class:`ScheduleKeeper`).

Hints arrive on ``<p>.cmd.<service>.*`` to every node of the service (fan-out, not a queue group:
the owner of a job must hear a stop or a restart, and a claim race is settled by MongoDB
atomically).

Faults (docs/DECISIONS.md "Scale-out and faults"):

- **MongoDB away**: a failed renewal keeps FFmpeg running (a database blip never kills live
  work). Every ``lease_s / 3`` each node publishes a :class:`NodeBeat` on ``<p>.beat.<service>``
  saying whether its last MongoDB round trip worked. A node whose renewals have failed for two
  thirds of a lease while a peer says it reaches MongoDB is the one cut off: its leases are about
  to expire and the peer to claim its jobs, so it **fences** itself (stops every FFmpeg first, so
  the two do not record at once). When MongoDB
  is down for everyone, nobody can claim, nobody fences, and FFmpeg runs on. When MongoDB comes
  back every lease looks expired, so a node that saw it fail claims nothing for ``lease_s / 2``:
  the owners renew first and keep their jobs (no needless handover after an outage).
- **Drain** (SIGTERM): the loop stops claiming, every FFmpeg is stopped gracefully (trailer
  written, part closed) and its lease released at once, and as each one is released a ``start``
  hint names it so a peer claims it now instead of at its next reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any, Protocol

from bson import ObjectId
from pydantic import ValidationError

from reelhouse.common.contracts.messages import JobCommand, NodeBeat
from reelhouse.common.jobs.lease import JobScan, Lease, LeaseStore
from reelhouse.common.jobs.windows import ScheduleKeeper
from reelhouse.common.service import ServiceContext
from reelhouse.common.settings import WorkerSettings
from reelhouse.common.subjects import Module

__all__ = ["FENCE_AFTER", "InvalidJob", "JobNode", "JobRun"]

FENCE_AFTER = 2 / 3
"""Share of a lease after which a node whose renewals fail, while a peer reaches MongoDB, stops
its FFmpegs (before the leases expire and the peer claims them)."""


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
        self._failing_since: float | None = None  # loop time the failing MongoDB calls began
        self._db_ok_at: float | None = None  # loop time of the last MongoDB call that worked
        self._renewed_at = 0.0  # loop time of the last renewal that reached MongoDB
        self._peer_db_ok_at = float("-inf")  # loop time a peer last said it reaches MongoDB
        self.fenced = 0  # runs stopped because this node was cut off from MongoDB
        self._claims_from = 0.0  # loop time before which this node claims nothing (after an outage)
        # Jobs whose start failed here: not claimed again by this node before the loop time given
        # (doubling per failure, up to a minute), so a job that cannot start is no claim storm.
        self._cooldown: dict[str, tuple[int, float]] = {}
        self._windows: ScheduleKeeper | None = None  # schedule windows (issue 10)
        self._tick_at = 0.0  # loop time of the next reconcile pass (scan, schedule tick)
        self._edge_at: float | None = None  # loop time of the next window edge

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
        fence = asyncio.create_task(self._fence_watch(), name="fence")
        try:
            await self._loop()
        finally:
            hints.cancel()
            fence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints
            draining = len(self.runs)
            await self._stop_all(f"{self.service} shutting down")
            if draining:
                self.log.info("drained", jobs=draining)

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
                await self._beat()
                next_renew = loop.time() + renew_every
            if hinted:
                await self._claim_delay()
            scan, scanned = await self._scan_if_due()
            # A claim is a read-modify-write of the job collection: tried on a hint, while
            # MongoDB is failing (the claim path handles coming back), or when the pass's scan
            # saw a job to claim (or could not look).
            if (
                hinted
                or self._failing_since is not None
                or (scanned and (scan is None or scan.claimable(self.runs)))
            ):
                await self._claim()
            self.ctx.node.running_jobs = len(self.runs)
            timeout = min(self.reconcile_s, max(0.0, next_renew - loop.time()))
            edge = await self._schedule_tick(scan)
            if edge is not None and edge < timeout:
                # A schedule window opens (claim) or a run's closes (renewal fails): look then.
                timeout, next_renew = edge, min(next_renew, loop.time() + edge)
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.ctx.stop.wait()),
            }
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    async def _scan_if_due(self) -> tuple[JobScan | None, bool]:
        """The pass's one read of the job collection (:meth:`LeaseStore.scan`), at most once per
        ``reconcile_s`` or at a window edge: ``(scan, True)``, ``(None, True)`` if it failed,
        ``(None, False)`` if not due."""
        now = asyncio.get_running_loop().time()
        if now < self._tick_at:
            return None, False
        self._tick_at = now + self.reconcile_s
        try:
            scan = await self.leases.scan()
        except Exception as exc:
            self._db_failed(now)
            self.log.warning("scan_failed", error=str(exc).splitlines()[0][:200])
            return None, True
        if self._failing_since is None:
            # Fresh proof for the beats that this node reaches MongoDB (a peer cut off from it
            # fences on that). After a failure the claim path says it is back (and holds claims).
            self._db_worked()
        return scan, True

    async def _schedule_tick(self, scan: JobScan | None) -> float | None:
        """Advance closed schedule windows, report skipped ones (issue 10) from ``scan``; seconds
        until the next window edge that concerns this node, or None."""
        now = asyncio.get_running_loop().time()
        if self._windows is None:
            self._windows = ScheduleKeeper(
                leases=self.leases, bus=self.ctx.bus, module=self.module, grace_s=self.lease_s
            )
        if scan is None:  # no pass now (or it could not read): the edge known from the last
            return None if self._edge_at is None else max(0.1, self._edge_at - now)
        try:
            leases = [r.lease for r in self.runs.values() if not r.stopping]
            edge = await self._windows.tick(leases, scan)
        except Exception as exc:
            self.log.warning("schedule_tick_failed", error=str(exc).splitlines()[0][:200])
            edge = None
        self._edge_at = None if edge is None else now + edge
        if self._edge_at is not None:
            self._tick_at = min(self._tick_at, self._edge_at)
        return edge

    async def _claim_delay(self) -> None:
        load = len(self.runs) / self.max_jobs
        if load > 0 and self.claim_delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), self.claim_delay_s * load)

    async def _claim(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self.runs) < self.max_jobs and not self.ctx.stop.is_set():
            if loop.time() < self._claims_from:
                return  # MongoDB just came back: the owners renew first
            if self._failing_since is not None and not await self._back_after_outage():
                return
            if not await self.can_claim():
                return
            now = loop.time()
            cooling = [ObjectId(j) for j, (_, until) in self._cooldown.items() if until > now]
            # Never a job this node already runs: a renewal held up past the lease (a database
            # slow under load) makes its lease look free, and a second run would orphan the
            # first one's FFmpeg.
            ours = [ObjectId(j) for j in self.runs]
            try:
                lease = await self.leases.claim(where=self.claim_where, exclude=cooling + ours)
            except Exception as exc:
                self._db_failed(now)
                self.log.warning("claim_failed", error=str(exc).splitlines()[0][:200])
                return
            self._db_worked()
            if lease is None:
                return
            if not self.runs:
                self._renewed_at = asyncio.get_running_loop().time()
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
            failures = self._cooldown.get(job_id, (0, 0.0))[0] + 1
            wait_s = min(60.0, 2.0 ** (failures - 1))
            self._cooldown[job_id] = (failures, asyncio.get_running_loop().time() + wait_s)
            self._begin_stop(run, f"could not start: {exc}")
        else:
            self._cooldown.pop(job_id, None)

    async def _renew_all(self) -> None:
        """One round trip renews every running job's lease; stopping jobs keep theirs by hold."""
        running = [run for run in self.runs.values() if not run.stopping]
        now = asyncio.get_running_loop().time()
        try:
            lost = await self.leases.renew_many([run.lease for run in running])
        except Exception as exc:
            # MongoDB away: keep running; the lease protocol settles it when it is back.
            self._db_failed(now)
            self.log.warning("lease_renew_failed", jobs=len(running), error=str(exc)[:200])
        else:
            self._renewed_at = now
            if running and self._db_worked():
                # Back after an outage: let the other owners renew first.
                self._claims_from = now + self.lease_s / 2
            for run in running:
                if run.lease.job_id in lost:
                    self._begin_stop(run, "job stopped, changed or taken over")
        for run in list(self.runs.values()):
            if run.stopping and run not in running:
                try:
                    await self.leases.hold(run.lease)
                except Exception as exc:
                    self.log.warning("lease_hold_failed", job_id=run.job_id, error=str(exc)[:200])

    async def _back_after_outage(self) -> bool:
        """After a failed round trip: ping; if MongoDB is back, hold claims for ``lease_s / 2``
        (the owners renew first). False in both cases: this pass claims nothing."""
        try:
            await self.ctx.db.command("ping")
        except Exception:
            return False
        self._db_worked()
        self._claims_from = asyncio.get_running_loop().time() + self.lease_s / 2
        self.log.info("mongo_back", claims_in_s=round(self.lease_s / 2, 1))
        return False

    def _db_failed(self, started: float) -> None:
        """A MongoDB call begun at loop time ``started`` failed."""
        if self._failing_since is None:
            self._failing_since = started

    def _db_worked(self) -> bool:
        """A MongoDB call worked; True if calls were failing until now."""
        recovering = self._failing_since is not None
        self._failing_since = None
        self._db_ok_at = asyncio.get_running_loop().time()
        return recovering

    async def _fence_watch(self) -> None:
        """Check often (not only when a slow renewal returns) whether to fence."""
        period = min(0.5, self.lease_s / 6)
        while not self.ctx.stop.is_set():
            if self._should_fence():
                # Sure it is us and not the database: a fresh try, begun after the peer's success.
                try:
                    await self.ctx.db.command("ping")
                except Exception:
                    self._fence()
                else:
                    self._db_worked()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), period)

    def _should_fence(self) -> bool:
        """Our renewals have failed for ``FENCE_AFTER`` of a lease and a peer has reached MongoDB
        since they began failing: the peer will claim our jobs when the leases expire."""
        now = asyncio.get_running_loop().time()
        failing_since = self._failing_since
        if failing_since is None or not any(not r.stopping for r in self.runs.values()):
            return False
        if now - self._renewed_at < FENCE_AFTER * self.lease_s:
            return False
        return self._peer_db_ok_at > failing_since

    def _fence(self) -> None:
        """Stop every run (gracefully) before the peer claims the jobs, so that the two never
        record at once."""
        running = [run for run in self.runs.values() if not run.stopping]
        now = asyncio.get_running_loop().time()
        self.log.error(
            "lease_fenced",
            jobs=len(running),
            since_s=round(now - self._renewed_at, 1),
            reason="cut off from MongoDB while peers reach it; they take the jobs over",
        )
        for run in running:
            self.fenced += 1
            self._begin_stop(run, "fenced: this node lost MongoDB, a peer takes over")

    async def _beat(self) -> None:
        """Tell peers whether this node reaches MongoDB (see the module's "Faults")."""
        bus = self.ctx.bus
        if not bus.connected:
            return
        now = asyncio.get_running_loop().time()
        ok_age = 1e9 if self._db_ok_at is None else now - self._db_ok_at
        beat = NodeBeat(service=self.service, node=self.ctx.node_id,
                        db_ok=self._failing_since is None, ok_age_s=round(ok_age, 3),
                        jobs=len(self.runs))  # fmt: skip
        with contextlib.suppress(Exception):
            await bus.publish(bus.subjects.beat(self.service), beat)

    async def _hint_peers(self, job_ids: list[str]) -> None:
        """Draining: ask peers to claim released jobs now (each as soon as its lease is let go,
        not after the slowest FFmpeg has stopped)."""
        bus = self.ctx.bus
        for job_id in job_ids:
            with contextlib.suppress(Exception):
                command = JobCommand(module=self.module, verb="start", job_id=job_id)
                await bus.publish(bus.subjects.command(self.service, "start"), command)
        if job_ids:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.nc.flush(), 2.0)

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
                if self.ctx.stop.is_set():  # draining: a peer may claim this job right now
                    await self._hint_peers([run.job_id])
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

        async def on_beat(msg: Any) -> None:
            try:
                beat = NodeBeat.model_validate_json(msg.data)
            except ValidationError:
                return
            if beat.node != self.ctx.node_id and beat.db_ok:
                ok_at = asyncio.get_running_loop().time() - beat.ok_age_s
                self._peer_db_ok_at = max(self._peer_db_ok_at, ok_at)

        subs = [
            await bus.nc.subscribe(bus.subjects.commands(self.service), cb=on_hint),
            await bus.nc.subscribe(bus.subjects.beat(self.service), cb=on_beat),
        ]
        try:
            await asyncio.Event().wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
