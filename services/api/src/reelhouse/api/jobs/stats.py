"""The live stats behind ``getStat``: the live plane's ``progress.`` keys, never MongoDB.

Every API replica watches ``progress.>`` in the live-plane bucket (:mod:`reelhouse.common.live`);
a watcher made at start delivers every current key at once, so a replica answers right after its
own restart. A key expires by itself (its TTL) when the node that wrote it dies; a job that
stops purges its key. Values are :class:`JobStats` JSON, decoded once per revision.
"""

from __future__ import annotations

from reelhouse.common.contracts.messages import JobStats
from reelhouse.common.live import LivePlane
from reelhouse.common.logging import get_logger
from reelhouse.common.subjects import Module

log = get_logger("reelhouse.api.stats")


class LiveStats:
    """Latest stats per (module, job id), read from the live plane's map."""

    def __init__(self, live: LivePlane) -> None:
        self._live = live
        self._decoded: dict[tuple[str, str], tuple[int, JobStats]] = {}
        self._rows: dict[tuple[str, str], tuple[int, dict]] = {}  # getStat rows, per revision

    def _stats(self, key: tuple[str, str], revision: int, value: dict) -> JobStats | None:
        cached = self._decoded.get(key)
        if cached is not None and cached[0] == revision:
            return cached[1]
        try:
            stats = JobStats.model_validate(value)
        except ValueError:
            log.warning("stats_value_invalid", module=key[0], job_id=key[1])
            return None
        self._decoded[key] = (revision, stats)
        return stats

    def forget(self, module: Module, job_id: str) -> None:
        """Drop a job's entry (it was stopped or removed through this API)."""
        self._live.progress.pop((module, job_id), None)
        self._decoded.pop((module, job_id), None)

    def get(self, module: Module, job_id: str) -> JobStats | None:
        found = self._live.owner_progress(module, job_id)
        if found is None:
            return None
        stats = self._stats((module, job_id), *found)
        if stats is None or stats.processData.progress == "end":
            return None
        return stats

    def current_all(self, module: Module) -> list[JobStats]:
        """Current stats of every tenant's running jobs of one module (metrics)."""
        rows = []
        for key in [k for k in self._live.progress if k[0] == module]:
            stats = self.get(module, key[1])
            if stats is not None:
                rows.append(stats)
        stale = set(self._decoded) - set(self._live.progress)
        for key in stale:
            self._decoded.pop(key, None)
        return rows

    def current(self, module: Module, *, tenant: str) -> list[JobStats]:
        """Current stats of the tenant's running jobs of one module."""
        return [stats for stats in self.current_all(module) if stats.tenant == tenant]

    def rows(self, module: Module, *, tenant: str) -> list[dict]:
        """getStat's rows for the tenant: each built once per progress revision (getStat is
        polled by every dashboard every few seconds; a job's row changes once a second)."""
        out = []
        for stats in self.current(module, tenant=tenant):
            key = (module, stats.job_id)
            revision = self._decoded[key][0]
            cached = self._rows.get(key)
            if cached is None or cached[0] != revision:
                cached = (revision, stat_row(stats))
                self._rows[key] = cached
            out.append(cached[1])
        for key in set(self._rows) - set(self._live.progress):
            self._rows.pop(key, None)
        return out


def stat_row(row: JobStats) -> dict:
    """One getStat entry: ``processData``, plus ``destinations`` when the worker reports them."""
    out: dict = {"processData": row.processData.model_dump(mode="json")}
    if row.destinations is not None:
        out["destinations"] = [d.model_dump(mode="json") for d in row.destinations]
    return out
