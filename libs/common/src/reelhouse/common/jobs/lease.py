"""Job ownership (docs/ARCHITECTURE.md §2), shared by the recorder, the restreamer and the prober.

Who runs a job is decided in the live plane (:mod:`reelhouse.common.live`), not in MongoDB: the
owner key ``owners.<kind>.<job_id>`` is created by the claim (``create`` is atomic: one winner),
taken over by compare-and-set when its node's heartbeat key expires, and deleted on release.
There are no per-job renewals: an owner holds its jobs for as long as its own node key lives.

The job document (``recordings``, ``restreams``, ``streams``) keeps the desired state written by
the API (``active``, ``paused``, the config, ``generation``, which the API increments whenever the
running worker must be replaced: ``start`` and ``update``) and a ``runtime`` block the owner
writes when something changes (claim, state change, release)::

    runtime: {node, generation, state, pid, started_at, restarts, last_error, last_progress,
              claimed_at}

- **claim**: the oldest job that wants to run (active, not paused, inside its schedule window) and
  has no owner key; the owner key is created, then the runtime block written on the condition
  that the generation is still the one read (else the key is given back).
- **check**: one read of the jobs a node runs (on a hint, at a schedule window's edge, and on the
  slow reconcile pass) names those it must stop: stopped, paused, removed, updated, restarted,
  out of their window, or owned by another node now.
- **take over**: compare-and-set of a dead node's owner key; the winner runs the job, or gives
  the key back if nobody may run it now (the finisher then takes it idle).
- **claim_idle**: a job nobody may run (stopped, paused, outside its window) whose files still
  need finishing is owned the same way (an owner key with ``state: finishing``), so one node
  finishes them and a start waits until it is done.
- **release**: deletes the owner key at the revision this node holds and unsets ``runtime``.
- **schedules**: a job with ``scheduled: true`` is claimable only inside its current window,
  ``schedule_next_start <= now < schedule_next_stop`` (a null stop never closes). The owner looks
  at the window's end (the node's loop wakes at that edge) and stops; the schedule keeper moves
  the window on (:mod:`reelhouse.common.jobs.windows`).

Every MongoDB operation is a single-document atomic update: no transactions, no change streams,
so the same code runs on MongoDB and FerretDB.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.live import LivePlane, OwnerEntry
from reelhouse.common.schedule import window_fields

__all__ = [
    "Clock",
    "JobScan",
    "Lease",
    "LeaseStore",
    "as_aware",
    "idle_claimable",
    "in_window",
    "outside_window",
    "runnable",
    "window_open",
]

Clock = Callable[[], datetime]
"""Now, timezone-aware UTC (tests inject their own)."""


def in_window(now: datetime) -> dict[str, Any]:
    """Filter: the job has no schedule, or ``now`` is inside its current window."""
    return {
        "$or": [
            {"scheduled": {"$ne": True}},
            {
                "schedule_next_start": {"$lte": now},
                "$or": [{"schedule_next_stop": None}, {"schedule_next_stop": {"$gt": now}}],
            },
        ]
    }


def outside_window(now: datetime) -> dict[str, Any]:
    """Filter: the job is scheduled and ``now`` is outside its current window (or none is left)."""
    return {
        "scheduled": True,
        "$or": [
            {"schedule_next_start": None},
            {"schedule_next_start": {"$gt": now}},
            {"schedule_next_stop": {"$lte": now}},
        ],
    }


def as_aware(value: datetime, like: datetime) -> datetime:
    """``value`` with ``like``'s timezone if it has none (read without ``tz_aware``)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)


def window_open(doc: dict[str, Any], now: datetime) -> bool:
    """:func:`in_window` for a document already read."""
    if doc.get("scheduled") is not True:
        return True
    start, stop = doc.get("schedule_next_start"), doc.get("schedule_next_stop")
    if start is None:
        return False
    return as_aware(start, now) <= now and (stop is None or now < as_aware(stop, now))


SCAN_FIELDS: dict[str, int] = {
    "active": 1, "paused": 1, "runtime.node": 1, "tenant": 1, "generation": 1,
    "scheduled": 1, "schedule": 1, "schedule_next_start": 1, "schedule_next_stop": 1,
    "schedule_skipped": 1,
}  # fmt: skip
"""What a reconcile pass reads of each job it looks at (:meth:`LeaseStore.scan`)."""


def runnable(doc: dict[str, Any], now: datetime) -> bool:
    """A job that wants FFmpeg running now: active, not paused, inside its window."""
    return doc.get("active") is True and doc.get("paused") is not True and window_open(doc, now)


@dataclass
class JobScan:
    """One reconcile pass's read of a job collection (:meth:`LeaseStore.scan`): every scheduled
    job and every job that wants to run, with the job ids that have an owner key right now."""

    now: datetime
    docs: list[dict[str, Any]]
    owned: Container[str] = ()

    @property
    def scheduled(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("scheduled") is True]

    def free(self, doc: dict[str, Any]) -> bool:
        """Nobody owns the job (no owner key)."""
        return str(doc["_id"]) not in self.owned

    def claimable(self, running: Container[str] = ()) -> bool:
        """Whether some job may be claimed now (as :meth:`LeaseStore.claim` would, save its
        ``where``): runnable, no owner, and not one of ``running`` (job ids this node runs)."""
        return any(
            runnable(doc, self.now) and self.free(doc) and str(doc["_id"]) not in running
            for doc in self.docs
        )


def idle_claimable(doc: dict[str, Any], now: datetime, owned: Container[str] = ()) -> bool:
    """What :meth:`LeaseStore.claim_idle` takes, for a document read with :data:`SCAN_FIELDS`:
    no FFmpeg may run (stopped, paused, or outside its window) and nobody owns the job."""
    return not runnable(doc, now) and str(doc["_id"]) not in owned


@dataclass
class Lease:
    """What an owner holds: the job id, the generation it started, its owner key's revision."""

    job_id: ObjectId
    generation: int
    doc: dict[str, Any]
    """The job document as it was when claimed (after the claim's update)."""
    revision: int = 0
    """The owner key's revision this node holds (release and checks compare with it)."""


class LeaseStore:
    """Claims, checks, takes over and releases the jobs of one collection for one node."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        collection: str,
        live: LivePlane,
        kind: str,
        node_id: str,
        clock: Clock = utcnow,
    ) -> None:
        self._jobs = db[collection]
        self.jobs = self._jobs  # the job collection (the schedule keeper reads it too)
        self.live = live
        self.kind = kind  # the module name in owner keys (recording, restream, stream)
        self.node_id = node_id
        self.clock = clock  # now (UTC); schedule windows are read against it

    def owned_ids(self) -> set[str]:
        """Job ids of this kind that have an owner key (from the live plane's map)."""
        return set(self.live.owned_by(self.kind))

    async def claim(
        self,
        *,
        job_id: ObjectId | None = None,
        exclude: list[ObjectId] | None = None,
        where: dict[str, Any] | None = None,
    ) -> Lease | None:
        """Claim one claimable job (``job_id`` if given, else the oldest); None if none is.

        ``where`` adds conditions a claimable document must also meet (the prober claims only
        streams that have a URL).
        """
        now = self.clock()
        query: dict[str, Any] = {**(where or {}), "active": True, "paused": {"$ne": True},
                                 **in_window(now)}  # fmt: skip
        skip = {ObjectId(j) for j in self.owned_ids()} | set(exclude or [])
        if job_id is not None:
            if job_id in skip:
                return None
            query["_id"] = job_id
        elif skip:
            query["_id"] = {"$nin": list(skip)}
        projection = {"_id": 1, "tenant": 1}
        candidates = await self._jobs.find(query, projection).sort("created", 1).to_list(5)
        for candidate in candidates:
            lease = await self._own(candidate["_id"], candidate.get("tenant"), state="starting")
            if lease is not None:
                return lease
        return None

    async def _own(self, job_id: ObjectId, tenant: Any, *, state: str) -> Lease | None:
        """Create the owner key, then confirm in MongoDB that the job still wants to run."""
        tenant = str(tenant or "default")
        revision = await self.live.claim(self.kind, str(job_id), state=state, tenant=tenant)
        if revision is None:
            return None
        return await self._confirm(job_id, revision)

    async def _confirm(self, job_id: ObjectId, revision: int) -> Lease | None:
        """With the owner key held at ``revision``: write the runtime block if the job is still
        runnable (the generation read is the one confirmed), else give the key back."""
        now = self.clock()
        doc = await self._jobs.find_one({"_id": job_id})
        if doc is None or not runnable(doc, now):
            await self.live.release(self.kind, str(job_id), revision)
            return None
        generation = int(doc.get("generation", 0))
        runtime = {"node": self.node_id, "claimed_at": now, "state": "starting", "restarts": 0,
                   "generation": generation}  # fmt: skip
        confirmed = await self._jobs.update_one(
            {"_id": job_id, "generation": generation, "active": True},
            {"$set": {"runtime": runtime}},
        )
        if confirmed.matched_count == 0:
            # Changed since it was read (updated, restarted, stopped): the next pass retries.
            await self.live.release(self.kind, str(job_id), revision)
            return None
        doc["runtime"] = runtime
        return Lease(job_id=job_id, generation=generation, doc=doc, revision=revision)

    async def take_over(self, entry: OwnerEntry) -> Lease | None:
        """Take a dead node's job by compare-and-set of its owner key; None if another node won
        it or nobody may run it now (the key is then given back for the finisher)."""
        tenant = str(entry.value.get("tenant") or "default")
        revision = await self.live.take_over(self.kind, entry.job_id, entry.revision,
                                             state="starting", taken_from=entry.node,
                                             tenant=tenant)  # fmt: skip
        if revision is None:
            return None
        return await self._confirm(ObjectId(entry.job_id), revision)

    async def scan(self) -> JobScan:
        """One read for a node's reconcile pass: the scheduled jobs (their windows) and the jobs
        that want to run. One query, not one per question (docs/DECISIONS.md "Fewer scans")."""
        now = self.clock()
        query = {"$or": [{"scheduled": True}, {"active": True, "paused": {"$ne": True}}]}
        docs = await self._jobs.find(query, SCAN_FIELDS).to_list(None)
        return JobScan(now=now, docs=docs, owned=self.owned_ids())

    async def check(self, leases: list[Lease]) -> set[ObjectId]:
        """The ids of the jobs among ``leases`` this node must stop now: stopped, paused,
        removed, updated, restarted, out of their window, or owned by another node. One read."""
        if not leases:
            return set()
        now = self.clock()
        wanted = {lease.job_id: lease for lease in leases}
        projection = {"active": 1, "paused": 1, "generation": 1, "scheduled": 1,
                      "schedule_next_start": 1, "schedule_next_stop": 1}  # fmt: skip
        docs = await self._jobs.find({"_id": {"$in": list(wanted)}}, projection).to_list(None)
        ours = set()
        for doc in docs:
            lease = wanted[doc["_id"]]
            owner = self.live.owners.get((self.kind, str(doc["_id"])))
            if owner is not None and owner.node != self.node_id:
                continue
            if runnable(doc, now) and int(doc.get("generation", 0)) == lease.generation:
                ours.add(doc["_id"])
        return set(wanted) - ours

    async def claim_idle(self, job_id: ObjectId, tenant: Any = None) -> Lease | None:
        """Own a job that is stopped or paused (no FFmpeg will run) to finish its files.

        None when the job is running, owned, or gone. Given back by :meth:`release`;
        ``runtime.state`` reads ``finishing`` meanwhile.
        """
        revision = await self.live.claim(self.kind, str(job_id), state="finishing",
                                         tenant=str(tenant or "default"))  # fmt: skip
        if revision is None:
            return None
        now = self.clock()
        doc = await self._jobs.find_one({"_id": job_id})
        if doc is None or runnable(doc, now):
            await self.live.release(self.kind, str(job_id), revision)
            return None
        await self._jobs.update_one(
            {"_id": job_id},
            {"$set": {"runtime": {"node": self.node_id, "claimed_at": now, "state": "finishing"}}},
        )
        return Lease(job_id=job_id, generation=int(doc.get("generation", 0)), doc=doc,
                     revision=revision)  # fmt: skip

    def holds(self, lease: Lease) -> bool:
        """Whether the live plane still names this node the job's owner (from the map)."""
        owner = self.live.owners.get((self.kind, str(lease.job_id)))
        return owner is None or owner.node == self.node_id

    async def hold(self, lease: Lease, runtime: dict[str, Any] | None = None) -> bool:
        """Write ``runtime.*`` fields while this node owns the job; False if the document names
        another node (or is gone)."""
        if not runtime:
            return self.holds(lease)
        fields = {f"runtime.{k}": v for k, v in runtime.items()}
        result = await self._jobs.update_one(
            {"_id": lease.job_id, "runtime.node": self.node_id}, {"$set": fields}
        )
        return result.matched_count == 1

    async def advance_windows(
        self, job_id: ObjectId | None = None, *, scan: JobScan | None = None
    ) -> int:
        """Move closed schedule windows on to each job's next window (all jobs, one, or those
        of ``scan``'s scheduled jobs whose window has closed).

        Each move is one atomic update conditioned on the closed window (so of several nodes one
        moves it) and increments ``generation``: every window is a session of its own, and an
        owner still running in the closed window finds its renewal refused. Returns how many
        windows moved.
        """
        now = self.clock() if scan is None else scan.now
        closed: list[dict[str, Any]]
        if scan is not None:
            closed = [d for d in scan.scheduled if d.get("schedule_next_stop") is not None
                      and as_aware(d["schedule_next_stop"], now) <= now]  # fmt: skip
        else:
            query: dict[str, Any] = {"scheduled": True, "schedule_next_stop": {"$lte": now}}
            if job_id is not None:
                query["_id"] = job_id
            projection = {"schedule": 1, "schedule_next_stop": 1}
            closed = await self._jobs.find(query, projection).to_list(None)
        moved = 0
        for doc in closed:
            fields = window_fields(doc.get("schedule"), now)
            result = await self._jobs.update_one(
                {"_id": doc["_id"], "schedule_next_stop": doc["schedule_next_stop"]},
                {"$set": fields, "$inc": {"generation": 1}},
            )
            moved += result.modified_count
            if result.modified_count:
                doc.update(fields)  # the scan reads the next window, not the closed one
        return moved

    async def release(self, lease: Lease) -> bool:
        """Give the job up: delete the owner key if this node still holds it at the lease's
        revision, and unset ``runtime`` if it still names this node."""
        released = await self.live.release(self.kind, str(lease.job_id), lease.revision)
        await self._jobs.update_one(
            {"_id": lease.job_id, "runtime.node": self.node_id}, {"$unset": {"runtime": ""}}
        )
        return released
