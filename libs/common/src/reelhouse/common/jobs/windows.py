"""Schedule windows on job documents: precomputed fields, advancing them, ``schedule_skip``.

A scheduled job document carries, besides its ``schedule`` (config), the window it is in or
waits for, precomputed so that the lease filters (:mod:`reelhouse.common.jobs.lease`) can test
it atomically::

    scheduled: true, schedule_next_start: <UTC>, schedule_next_stop: <UTC or null>,
    schedule_skipped: false

The API writes them on create, update and start
(:func:`reelhouse.common.schedule.window_fields`); when a window has closed, the owner that
stops or any worker's reconcile pass (both :meth:`LeaseStore.advance_windows`, driven by
:class:`ScheduleKeeper` here) moves them on to the next window and increments ``generation``, so
each window is a session of its own. The keeper also publishes ``schedule_skip`` once per
window that opens while the job cannot run (stopped, paused, or not claimed by any node within
a grace period), and tells the node loop when the next window opens or a running one closes,
so it claims and stops on time instead of on its next timer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.events import ScheduleSkip
from reelhouse.common.jobs.lease import (
    JobScan,
    Lease,
    LeaseStore,
    as_aware,
)
from reelhouse.common.logging import get_logger
from reelhouse.common.subjects import Module

__all__ = ["ScheduleKeeper"]

EDGE_SLACK_S = 0.05
"""Seconds past a window edge at which the node looks (timers may fire a little early)."""


class ScheduleKeeper:
    """The schedule part of a worker's reconcile pass, for one job collection."""

    def __init__(self, *, leases: LeaseStore, bus: Bus, module: Module, grace_s: float) -> None:
        self._leases = leases
        self._jobs = leases.jobs
        self._bus = bus
        self._module = module
        self._node_id = leases.node_id
        self._grace = timedelta(seconds=grace_s)  # a window open this long, unclaimed: skipped
        self._log = get_logger("reelhouse.schedule").bind(module=module)

    async def tick(self, leases: Iterable[Lease], scan: JobScan) -> float | None:
        """Advance closed windows, report skipped ones; seconds until the next edge (a window of
        a claimable job opens, or one of ``leases`` closes), or None. Reads nothing itself: the
        jobs come from the pass's one :meth:`LeaseStore.scan`."""
        held = list(leases)
        await self._leases.advance_windows(scan=scan)
        await self._report_skips(scan, {lease.job_id for lease in held})
        return self._next_edge(held, scan)

    def _skip(
        self, doc: dict[str, Any], now: datetime, scan: JobScan
    ) -> tuple[str, str, dict[str, Any]] | None:
        """For a window that is open now and not yet reported, in which the job cannot run
        (stopped, paused, or not claimed by anyone ``grace`` after it opened): the state, why,
        and the filter that re-checks it atomically (the scan may be a moment old). Else None."""
        start, stop = doc.get("schedule_next_start"), doc.get("schedule_next_stop")
        if doc.get("schedule_skipped") is True or start is None:
            return None
        start = as_aware(start, now)
        if start > now or (stop is not None and as_aware(stop, now) <= now):
            return None
        if doc.get("active") is not True:
            return "stopped", "the job is stopped", {"active": {"$ne": True}}
        if doc.get("paused") is True:
            return "paused", "the job is paused", {"paused": True}
        if scan.free(doc) and start <= now - self._grace:
            why = f"no node started it within {self._grace.total_seconds():g} s"
            return "unclaimed", why, {}
        return None

    async def _report_skips(self, scan: JobScan, owned: set[Any]) -> None:
        now = scan.now
        for doc in scan.scheduled:
            skip = None if doc["_id"] in owned else self._skip(doc, now, scan)
            if skip is None:
                continue  # (a job this node claimed since the scan is not skipped)
            state, why, still = skip
            result = await self._jobs.update_one(
                {"_id": doc["_id"], "schedule_skipped": {"$ne": True},
                 "schedule_next_start": doc["schedule_next_start"], **still},
                {"$set": {"schedule_skipped": True}},
            )  # fmt: skip
            if not result.modified_count:
                continue  # another node reported it, the window moved on, or it runs now
            start, stop = doc["schedule_next_start"], doc.get("schedule_next_stop")
            window = f"{format_timestamp(start)} to {format_timestamp(stop) if stop else 'open'}"
            reason = f"schedule window {window} opened but {why}"
            self._log.warning("schedule_skip", job_id=str(doc["_id"]), state=state, reason=reason)
            job_id = str(doc["_id"])
            message = ScheduleSkip(module=self._module, job_id=job_id,
                                   tenant=str(doc.get("tenant", "default")), node=self._node_id,
                                   state=state, reason=reason)  # fmt: skip
            try:
                await self._bus.publish(
                    self._bus.subjects.event(self._module, job_id, "schedule_skip"), message
                )
            except Exception as exc:
                self._log.debug("event_not_published", error=str(exc))

    def _next_edge(self, leases: list[Lease], scan: JobScan) -> float | None:
        now = scan.now
        edges: list[datetime] = []
        for lease in leases:
            stop = lease.doc.get("schedule_next_stop")
            if lease.doc.get("scheduled") and stop is not None:
                edges.append(as_aware(stop, now))
        for doc in scan.scheduled:  # the next window of a job that will want to run
            if doc.get("active") is not True or doc.get("paused") is True:
                continue
            start = doc.get("schedule_next_start")
            if start is not None and as_aware(start, now) > now:
                edges.append(as_aware(start, now))
        if not edges:
            return None
        return max(0.1, (min(edges) - now).total_seconds() + EDGE_SLACK_S)
