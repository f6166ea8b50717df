"""Job ownership by lease (ARCHITECTURE §2), shared by the recorder and the restreamer.

A job document (``recordings`` or ``restreams``) carries the desired state written by the API
(``active``, the config, and ``generation``, which the API increments whenever the running worker
must be replaced: ``start`` and ``update``) and a ``runtime`` block written only by its owner::

    runtime: {node, lease_until, generation, state, pid, started_at, restarts, last_error,
              last_progress, claimed_at}

- **claim**: one atomic ``find_one_and_update`` on ``{active: true, not paused, runtime absent
  or runtime.lease_until < now}`` sets ``runtime.node`` and ``lease_until = now + lease``; only the
  winner starts FFmpeg. The generation the owner started with is remembered in
  ``runtime.generation``.
- **renew** (every ``lease/3``): matches ``{_id, runtime.node: me, active: true, not paused,
  generation: the one I started}``. A renewal that matches nothing (stopped, paused, removed,
  updated, restarted, taken over) tells the owner to stop its FFmpeg at once. ``renew_many``
  renews all of a node's leases in one ``update_many`` (each document still updated atomically
  on its own, with the same per-job condition); only when fewer documents matched than were
  asked does a second query find which ones were lost.
- **hold**: while the owner stops FFmpeg gracefully it keeps the lease (``{_id, runtime.node:
  me}`` only) so nobody else starts a second FFmpeg on the same job before the first has let go.
- **claim_idle**: a job nobody may run (stopped or paused) whose files still need finishing
  (parts a dead owner left, a session to join) is leased the same way, so
  one node finishes them and a start waits until it is done.
- **release**: unsets ``runtime`` if this node still owns it; the job is free to be claimed again
  at once (or reads as stopped when ``active`` is false).
- **schedules** (docs/DECISIONS.md "Schedules, arming, quotas"): a job with ``scheduled: true``
  is claimable and renewable only inside its current window, ``schedule_next_start <= now <
  schedule_next_stop`` (a null stop never closes). The window fields are precomputed (API on
  create/update/start, workers when a window ends: :mod:`reelhouse.common.jobs.windows`), so a
  node that dies mid-window loses nothing (another claims the job) and the owner's renewal
  fails when the window closes. ``claim_idle`` also takes a scheduled job outside its window.

Every operation is a single-document atomic update: no transactions, no change streams, so the
same code runs on MongoDB and FerretDB.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.schedule import window_fields

__all__ = [
    "Clock",
    "JobScan",
    "Lease",
    "LeaseStore",
    "as_aware",
    "idle_claimable",
    "in_window",
    "lease_free",
    "outside_window",
    "unleased",
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


def unleased(now: datetime) -> dict[str, Any]:
    """Filter: nobody holds the job's lease (no ``runtime``, or its ``lease_until`` has passed)."""
    return {"$or": [{"runtime": {"$exists": False}}, {"runtime.lease_until": {"$lt": now}}]}


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
    "active": 1, "paused": 1, "runtime.node": 1, "runtime.lease_until": 1, "tenant": 1,
    "scheduled": 1, "schedule": 1, "schedule_next_start": 1, "schedule_next_stop": 1,
    "schedule_skipped": 1,
}  # fmt: skip
"""What a reconcile pass reads of each job it looks at (:meth:`LeaseStore.scan`)."""


@dataclass
class JobScan:
    """One reconcile pass's read of a job collection (:meth:`LeaseStore.scan`): every scheduled
    job, and every job whose lease is free while it wants to run."""

    now: datetime
    docs: list[dict[str, Any]]

    @property
    def scheduled(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("scheduled") is True]

    def claimable(self, running: Container[str] = ()) -> bool:
        """Whether some job may be claimed now (as :meth:`LeaseStore.claim` would, save its
        ``where``): active, not paused, lease free, inside its window, and not one of
        ``running`` (job ids this node runs: a late renewal is not a free job)."""
        return any(
            doc.get("active") is True and doc.get("paused") is not True
            and lease_free(doc, self.now) and window_open(doc, self.now)
            and str(doc["_id"]) not in running
            for doc in self.docs
        )  # fmt: skip


def lease_free(doc: dict[str, Any], now: datetime) -> bool:
    """:func:`unleased` for a document already read."""
    runtime = doc.get("runtime")
    if runtime is None:
        return True
    until = runtime.get("lease_until") if isinstance(runtime, dict) else None
    return until is not None and as_aware(until, now) < now


def idle_claimable(doc: dict[str, Any], now: datetime) -> bool:
    """What :meth:`LeaseStore.claim_idle` takes, for a document read with :data:`SCAN_FIELDS`:
    no FFmpeg may run (stopped, paused, or outside its window) and nobody holds the lease."""
    idle = doc.get("active") is not True or doc.get("paused") is True or not window_open(doc, now)
    return idle and lease_free(doc, now)


@dataclass
class Lease:
    """What an owner holds: the job id and the generation it started."""

    job_id: ObjectId
    generation: int
    doc: dict[str, Any]
    """The job document as it was when claimed (after the claim's update)."""


class LeaseStore:
    """Claims, renews and releases job leases in one collection for one node."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        collection: str,
        node_id: str,
        lease_s: float,
        clock: Clock = utcnow,
    ) -> None:
        self._jobs = db[collection]
        self.jobs = self._jobs  # the job collection (the schedule keeper reads it too)
        self.node_id = node_id
        self.lease_s = lease_s  # seconds a lease lasts without renewal
        self.clock = clock  # now (UTC); schedule windows and lease expiry are read against it

    def _until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

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
        query: dict[str, Any] = {
            **(where or {}),
            "active": True,
            "paused": {"$ne": True},
            "$and": [unleased(now), in_window(now)],
        }
        if job_id is not None:
            query["_id"] = job_id
        elif exclude:
            query["_id"] = {"$nin": exclude}
        # The generation is copied into runtime in a second step (an update cannot read a
        # field of the same document); until then the lease is ours but unconfirmed.
        doc = await self._jobs.find_one_and_update(
            query,
            {
                "$set": {
                    "runtime": {
                        "node": self.node_id,
                        "lease_until": self._until(now),
                        "claimed_at": now,
                        "state": "starting",
                        "restarts": 0,
                    }
                }
            },
            sort=[("created", 1)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        generation = int(doc.get("generation", 0))
        confirmed = await self._jobs.update_one(
            {"_id": doc["_id"], "runtime.node": self.node_id, "generation": generation},
            {"$set": {"runtime.generation": generation}},
        )
        if confirmed.matched_count == 0:
            # Changed between the two steps (updated, restarted): let the next pass retry.
            await self.release(doc["_id"])
            return None
        return Lease(job_id=doc["_id"], generation=generation, doc=doc)

    async def scan(self) -> JobScan:
        """One read for a node's reconcile pass: the scheduled jobs (their windows) and the jobs
        that want to run while nobody holds their lease (worth a claim). One query, not one per
        question: FerretDB's SQLite backend reads the whole collection for any filter but a
        bare ``_id``, so each query costs every document (docs/DECISIONS.md "Fewer scans")."""
        now = self.clock()
        query = {"$or": [{"scheduled": True},
                         {"active": True, "paused": {"$ne": True}, **unleased(now)}]}  # fmt: skip
        docs = await self._jobs.find(query, SCAN_FIELDS).to_list(None)
        return JobScan(now=now, docs=docs)

    async def claim_idle(self, job_id: ObjectId) -> Lease | None:
        """Lease a job that is stopped or paused (no FFmpeg will run) to finish its files.

        None when the job is running, owned, or gone. The lease is kept by :meth:`hold` and
        given back by :meth:`release`; ``runtime.state`` reads ``finishing`` meanwhile.
        """
        now = self.clock()
        doc = await self._jobs.find_one_and_update(
            {
                "_id": job_id,
                "$and": [
                    {"$or": [{"active": {"$ne": True}}, {"paused": True}, outside_window(now)]},
                    unleased(now),
                ],
            },
            {"$set": {"runtime": {"node": self.node_id, "lease_until": self._until(now),
                                  "claimed_at": now, "state": "finishing"}}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if doc is None:
            return None
        return Lease(job_id=doc["_id"], generation=int(doc.get("generation", 0)), doc=doc)

    async def renew(self, lease: Lease, runtime: dict[str, Any] | None = None) -> bool:
        """Extend the lease (and write ``runtime.*`` fields); False means: stop FFmpeg now."""
        now = self.clock()
        fields = {f"runtime.{k}": v for k, v in (runtime or {}).items()}
        result = await self._jobs.update_one(
            {
                "_id": lease.job_id,
                "runtime.node": self.node_id,
                "active": True,
                "paused": {"$ne": True},
                "generation": lease.generation,
                **in_window(now),
            },
            {"$set": {"runtime.lease_until": self._until(now), **fields}},
        )
        return result.matched_count == 1

    async def renew_many(self, leases: list[Lease]) -> set[ObjectId]:
        """Extend many leases in one round trip; returns the ids of the jobs no longer ours.

        One ``update_many`` whose filter is, per job, the same condition as :meth:`renew`. A
        job in the returned set was stopped, removed, updated, restarted or taken over: its
        FFmpeg must stop at once. (A document is matched at most once, so ``matched_count``
        equal to the number of leases means every one was renewed.)
        """
        if not leases:
            return set()
        now = self.clock()
        wanted = {lease.job_id: lease.generation for lease in leases}
        result = await self._jobs.update_many(
            {
                "runtime.node": self.node_id,
                "active": True,
                "paused": {"$ne": True},
                "$and": [
                    {"$or": [{"_id": job_id, "generation": gen} for job_id, gen in wanted.items()]},
                    in_window(now),
                ],
            },
            {"$set": {"runtime.lease_until": self._until(now)}},
        )
        if result.matched_count == len(wanted):
            return set()
        still = self._jobs.find(
            {"_id": {"$in": list(wanted)}},
            {
                "active": 1,
                "paused": 1,
                "generation": 1,
                "runtime.node": 1,
                "scheduled": 1,
                "schedule_next_start": 1,
                "schedule_next_stop": 1,
            },
        )
        ours = {
            doc["_id"]
            async for doc in still
            if doc.get("active") is True
            and doc.get("paused") is not True
            and int(doc.get("generation", 0)) == wanted[doc["_id"]]
            and (doc.get("runtime") or {}).get("node") == self.node_id
            and window_open(doc, now)
        }
        return set(wanted) - ours

    async def hold(self, lease: Lease, runtime: dict[str, Any] | None = None) -> bool:
        """Keep the lease while stopping (whatever the desired state); False if it is gone."""
        now = self.clock()
        fields = {f"runtime.{k}": v for k, v in (runtime or {}).items()}
        result = await self._jobs.update_one(
            {"_id": lease.job_id, "runtime.node": self.node_id},
            {"$set": {"runtime.lease_until": self._until(now), **fields}},
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

    async def release(self, job_id: ObjectId) -> bool:
        """Give the job up (unset ``runtime``) if this node still owns it."""
        result = await self._jobs.update_one(
            {"_id": job_id, "runtime.node": self.node_id}, {"$unset": {"runtime": ""}}
        )
        return result.matched_count == 1
