"""A worker node: claims, runs and stops jobs, takes a dead node's over (docs/ARCHITECTURE.md §2).

The recorder, the restreamer and the prober's monitors are each a :class:`JobNode`; each only
says how to turn a claimed job document into a running :class:`JobRun`. Ownership lives in the
live plane (:mod:`reelhouse.common.live`, :mod:`reelhouse.common.jobs.lease`): an owner key per
job, a heartbeat key per node, no per-job renewals. One loop reconciles desired state (MongoDB)
with what this node runs:

- **hints** (``<p>.cmd.<service>.*``, fan-out: the owner of a job must hear its stop or restart,
  and a claim race is settled by the owner key's atomic create) wake the loop: a hint naming a
  job this node runs reads that job once (:meth:`LeaseStore.check`) and stops it if it changed;
  any hint is a chance to claim, after ``claim_delay_s * load`` so the least loaded node wins;
- **failover**: when a node's key expires, the watcher says so at once; every peer waits its
  ``claim_delay_s * load``, re-reads the dead node's key, and takes its owner keys over by
  compare-and-set (exactly one wins each job). A node that sees its own job's owner key name
  another node stops that run at once (it was cut off from NATS and is back: overlap, not loss);
- **the reconcile pass** (every ``reconcile_s``, tens of seconds; tests run it short) reads the
  job collection once (:meth:`LeaseStore.scan`) and the jobs this node runs once, and repairs
  what a lost hint missed: claims, stops, and owner keys left by nodes that died while nobody
  watched (a whole-stack restart). A schedule window's edge wakes the loop on time.
- With N jobs running a node makes **no periodic database queries** but that pass: the heartbeat,
  progress and ownership all go to NATS.

Faults (docs/DECISIONS.md "The live plane"): NATS away → FFmpeg keeps running, nothing is claimed;
after any reconnect nothing is claimed on a node's absence until the live plane has been
connected for one TTL plus one heartbeat. MongoDB away → running jobs are untouched (nothing
periodic needs it); claims wait for it. Drain (SIGTERM): the loop stops claiming; a job whose source
admits two readers is released and hinted first and stopped here once a peer's run of it reports
progress (make-before-break: overlap, no gap); every other FFmpeg is stopped gracefully, its
owner key released, and a ``start`` hint names the job so a peer claims it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any, Protocol

from bson import ObjectId
from pydantic import ValidationError

from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.jobs.lease import JobScan, Lease, LeaseStore
from reelhouse.common.jobs.windows import ScheduleKeeper
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
        self.live = ctx.live
        self.leases = LeaseStore(db=ctx.db, collection=self.collection, live=ctx.live,
                                 kind=self.module, node_id=ctx.node_id)  # fmt: skip
        self.runs: dict[str, JobRun] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._hinted: set[str] = set()
        self._gone: set[str] = set()  # nodes whose key expired: take their jobs over
        self._taken: set[str] = set()  # runs whose owner key now names another node
        # Jobs whose start failed here: not claimed again by this node before the loop time given
        # (doubling per failure, up to a minute), so a job that cannot start is no claim storm.
        self._cooldown: dict[str, tuple[int, float]] = {}
        self._windows: ScheduleKeeper | None = None  # schedule windows (issue 10)
        self._tick_at = 0.0  # loop time of the next reconcile pass (scan, checks, orphans)
        self._edge_at: float | None = None  # loop time of the next window edge
        self.taken_over = 0  # jobs this node took from dead nodes (for /metrics and tests)

    # Worker services read these from WorkerSettings; another service may map its own settings.
    @property
    def max_jobs(self) -> int:
        return int(self.settings.max_jobs)

    @property
    def reconcile_s(self) -> float:
        return float(self.settings.reconcile_s)

    @property
    def handover_wait_s(self) -> float:
        """Draining: how long a run waits for a peer's run of its job before it stops anyway."""
        return float(getattr(self.settings, "handover_wait_s", 10.0))

    @property
    def schedule_grace_s(self) -> float:
        """A window open this long without any node running its job is reported skipped."""
        return float(getattr(self.settings, "schedule_grace_s", 15.0))

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
        self.live.on_node_gone.append(self._node_gone)
        self.live.on_owner.append(self._owner_changed)
        self.live.on_resync.append(self._resynced)
        hints = asyncio.create_task(self._subscribe(), name="hints")
        try:
            await self._loop()
        finally:
            hints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints
            draining = len(self.runs)
            await self._stop_all(f"{self.service} shutting down")
            if draining:
                self.log.info("drained", jobs=draining)

    # -- live-plane callbacks -----------------------------------------------------------------

    async def _node_gone(self, service: str, node: str) -> None:
        """A node's heartbeat key expired (or was deleted): take its jobs over, if it had any."""
        if service == self.service and self.live.owned_by(self.module, node):
            self._gone.add(node)
            self._wake.set()

    def _owner_changed(self, key: tuple[str, str], entry: Any) -> None:
        kind, job_id = key
        run = self.runs.get(job_id) if kind == self.module else None
        if run is None or run.stopping or entry is None or entry.node == self.ctx.node_id:
            return
        self._taken.add(job_id)
        self._wake.set()

    async def _resynced(self) -> None:
        """After (re)connecting: runs whose owner key names another node stop at once; the next
        pass looks for orphaned keys (once the live plane has settled)."""
        for job_id, run in list(self.runs.items()):
            owner = self.live.owners.get((self.module, job_id))
            if not run.stopping and owner is not None and owner.node != self.ctx.node_id:
                self._taken.add(job_id)
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        await self._wait_live()
        while not self.ctx.stop.is_set():
            hinted = self._wake.is_set()
            self._wake.clear()
            self._stop_taken()
            if self._hinted:
                await self._check_hinted()
            if hinted:
                await self._claim_delay()
            if self._gone:
                await self._take_over_gone()
            scan, scanned = await self._scan_if_due()
            if scanned:
                await self._check_all()
                await self._take_over_orphans()
            # A claim reads the job collection: tried on a hint, or when the pass's scan saw a
            # job to claim (or could not look).
            if hinted or (scanned and (scan is None or scan.claimable(self.runs))):
                await self._claim()
            self.ctx.node.running_jobs = len(self.runs)
            timeout = max(0.05, self._tick_at - loop.time())
            if self._gone:  # a node died before the live plane settled: look again once it has
                timeout = min(timeout, max(0.05, self.live.settles_in() + 0.05))
            edge = await self._schedule_tick(scan)
            if edge is not None and edge < timeout:
                timeout = edge  # a schedule window opens (claim) or a run's closes (stop)
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.ctx.stop.wait()),
            }
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    async def _wait_live(self) -> None:
        """Claim nothing before the live plane is open (the owner map is what claims consult)."""
        while not self.ctx.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.live.ready.wait(), 1.0)
                return

    def _stop_taken(self) -> None:
        taken, self._taken = self._taken, set()
        for job_id in taken:
            run = self.runs.get(job_id)
            owner = self.live.owners.get((self.module, job_id))
            if run is None or run.stopping or owner is None or owner.node == self.ctx.node_id:
                continue
            self.log.warning(f"{self.module}_taken_over", job_id=job_id, by=owner.node)
            self._begin_stop(run, f"taken over by {owner.node}")

    async def _take_over_gone(self) -> None:
        """Take the jobs of nodes whose key expired, once the live plane has settled."""
        if not self.live.settled:
            return  # the reconcile pass's orphan sweep takes them, if they are still orphaned
        gone, self._gone = self._gone, set()
        for node in gone:
            if await self.live.node_alive_now(node, self.service):
                continue  # it heartbeats again (a blip): nothing to take
            await self._take_over(node)

    async def _take_over_orphans(self) -> None:
        """Owner keys of nodes that are not alive (died while nobody watched): take them over."""
        if not self.live.settled or self.ctx.stop.is_set():
            return
        me, service = self.ctx.node_id, self.service
        dead = {e.node for e in self.live.owned_by(self.module).values()
                if e.node != me and not self.live.alive(e.node, service)}  # fmt: skip
        for node in dead:
            if not await self.live.node_alive_now(node, self.service):
                await self._take_over(node)

    async def _take_over(self, node: str) -> None:
        """Take ``node``'s jobs: the compare-and-sets one after another (each a round trip of a
        fraction of a millisecond), then every won job starts at once, not one after another
        (a start finishes the dead node's part first, a few hundred ms each)."""
        entries = list(self.live.owned_by(self.module, node).values())
        if not entries or self.ctx.stop.is_set():
            return
        won: list[Lease] = []
        for entry in entries:
            if len(self.runs) + len(won) >= self.max_jobs or self.ctx.stop.is_set():
                break
            if not await self.can_claim():
                break
            current = self.live.owners.get((self.module, entry.job_id))
            if current is None or current.node != node or entry.job_id in self.runs:
                continue  # released, or already taken by a peer
            try:
                lease = await self.leases.take_over(current)
            except Exception as exc:
                self.log.warning("take_over_failed", job_id=entry.job_id,
                                 error=str(exc).splitlines()[0][:200])  # fmt: skip
                continue
            if lease is not None:
                self.taken_over += 1
                self.log.info(f"{self.module}_taken_over_from", job_id=entry.job_id, node=node)
                won.append(lease)
        await asyncio.gather(*(self._start(lease) for lease in won))

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
            self.log.warning("scan_failed", error=str(exc).splitlines()[0][:200])
            return None, True
        return scan, True

    async def _schedule_tick(self, scan: JobScan | None) -> float | None:
        """Advance closed schedule windows, report skipped ones (issue 10) from ``scan``; seconds
        until the next window edge that concerns this node, or None."""
        now = asyncio.get_running_loop().time()
        if self._windows is None:
            self._windows = ScheduleKeeper(
                leases=self.leases,
                bus=self.ctx.bus,
                module=self.module,
                grace_s=self.schedule_grace_s,
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
            if not self.live.ready.is_set() or not self.ctx.bus.connected:
                return  # the owner map is what a claim consults
            if not await self.can_claim():
                return
            now = loop.time()
            cooling = [ObjectId(j) for j, (_, until) in self._cooldown.items() if until > now]
            ours = [ObjectId(j) for j in self.runs]  # never a second run of a job this node runs
            try:
                lease = await self.leases.claim(where=self.claim_where, exclude=cooling + ours)
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
            await self.leases.release(lease)
            return
        except Exception as exc:
            # MongoDB away while loading: give the job back; the next pass retries.
            self.log.warning(f"{self.module}_load_failed", job_id=job_id, error=str(exc)[:200])
            with contextlib.suppress(Exception):
                await self.leases.release(lease)
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

    async def _check_all(self) -> None:
        """The reconcile pass's one read of the jobs this node runs: stop what changed."""
        runs = [run for run in self.runs.values() if not run.stopping]
        await self._check(runs, "job stopped, changed or taken over")

    async def _check(self, runs: list[JobRun], reason: str) -> None:
        if not runs:
            return
        try:
            lost = await self.leases.check([run.lease for run in runs])
        except Exception as exc:
            # MongoDB away: keep running (a database outage never kills live work).
            self.log.warning("job_check_failed", jobs=len(runs), error=str(exc)[:200])
            return
        for run in runs:
            if run.lease.job_id in lost and not run.stopping:
                self._begin_stop(run, reason)

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
        await self._check(runs, "job stopped, changed or restarted")

    def stop_run(self, run: JobRun, reason: str) -> None:
        """Stop one run now (it found out itself that its job is no longer its own)."""
        if not run.stopping:
            self._begin_stop(run, reason)

    def _begin_stop(self, run: JobRun, reason: str, *, hand_over: bool = False) -> None:
        async def stop() -> None:
            try:
                if hand_over:
                    await self._hand_over(run)
                await run.stop(reason)
            finally:
                if self.runs.get(run.job_id) is run:
                    del self.runs[run.job_id]
                if self.ctx.stop.is_set() and not hand_over:  # draining: a peer may claim it now
                    await self._hint_peers([run.job_id])
                self.ctx.node.running_jobs = len(self.runs)
                self._wake.set()  # the job may be claimable again (restart, update)

        task = asyncio.create_task(stop(), name=f"stop-{run.job_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_all(self, reason: str) -> None:
        """Stop every run; while draining with a live peer, a run whose source admits two readers
        is handed over first (make-before-break, :meth:`_hand_over`)."""
        me = self.ctx.node_id
        peers = self.ctx.stop.is_set() and any(
            e.alive and e.service == self.service and e.node != me
            for e in list(self.live.nodes.values())
        )
        two_readers = [r for r in self.runs.values() if getattr(r, "admits_two_readers", False)]
        if self.ctx.stop.is_set() and two_readers and not peers:
            self.log.info("drain_without_handover", jobs=len(two_readers),
                          reason="no live peer of this service")  # fmt: skip
        for run in list(self.runs.values()):
            if run.stopping:
                continue
            if peers and getattr(run, "admits_two_readers", False):
                self._begin_stop(run, reason, hand_over=True)
            else:
                self._begin_stop(run, reason)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _hand_over(self, run: JobRun) -> None:
        """Draining, make-before-break: give the job up and hint the peers while FFmpeg still
        records here, then wait (up to ``handover_wait_s``) until a peer's run of it reports
        progress, so that the two overlap instead of leaving a gap; the session's join removes
        the overlap."""
        try:
            await self.leases.release(run.lease)
        except Exception as exc:
            self.log.warning("handover_release_failed", job_id=run.job_id, error=str(exc)[:200])
            return
        await self._hint_peers([run.job_id])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handover_wait_s
        while loop.time() < deadline:
            owner = self.live.owners.get((self.module, run.job_id))
            if owner is not None and owner.node != self.ctx.node_id:
                progress = await self.live.read_progress(self.module, run.job_id)
                if progress is not None and progress.get("node") == owner.node:
                    self.log.info(f"{self.module}_handed_over", job_id=run.job_id, to=owner.node)
                    return
            await asyncio.sleep(0.1)
        self.log.warning(f"{self.module}_handover_timed_out", job_id=run.job_id,
                         waited_s=self.handover_wait_s)  # fmt: skip

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

        subs = [
            await bus.nc.subscribe(bus.subjects.commands(self.service), cb=on_hint),
        ]
        try:
            await asyncio.Event().wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
