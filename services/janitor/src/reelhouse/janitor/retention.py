"""The janitor's pass: retention, purge of soft-deleted records, vanished files, orphans, and
the disk watermarks (a ``disk_warning`` event on ``<p>.evt.storage.disk_warning`` each time the
storage disk enters the warning or the critical level; docs/DECISIONS.md "Disk watermarks").

Safe with several janitors at once (docs/DECISIONS.md "Retention and storage (janitor)"):

- A retention delete first *claims* the record: one ``find_one_and_update`` from its current
  status (``ready``/``failed``) to ``deleted``. Only the janitor whose update matched removes the
  file (and an HLS playlist's segments) and then the record, so each file is deleted once.
- A purge of a record left ``deleted`` (a janitor died between claim and removal, or something
  soft-deleted it) is a ``find_one_and_delete``: again one winner, whose disk delete is
  idempotent anyway.
- Eviction (``evict_when_critical``): while the disk is critical, the oldest expendable files go,
  through the same claim, reason ``evicted``: ``ready``/``failed`` files only (never one being
  written, processed or archived), and never a job's newest ``ready`` file, so every job keeps
  its latest recording; it stops as soon as the disk is below the critical level.
- Orphans are unlinked with ``FileNotFoundError`` ignored; only a successful unlink is reported
  as removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import DiskWarning
from reelhouse.common.contracts.storage import Orphan, PassReport, RemovedFile
from reelhouse.common.events import FileDeleted
from reelhouse.common.files import (
    delete_file_record_from_disk,
    hls_segments,
    is_under,
    present_file,
)
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections, find_each
from reelhouse.common.storage import DiskLevel, disk_state
from reelhouse.janitor.objects import delete_object_of

MODULE = "recording"
DELETABLE = ("ready", "failed")
"""Statuses retention may delete; ``recording`` and ``processing`` files are never touched."""
COUNTED_OUT = ("deleted", "archived")
"""Statuses that do not count against a job's ``max_files``/``max_bytes``."""

_JOB_DIR = re.compile(r"^[0-9a-f]{24}$")

log = get_logger("reelhouse.janitor")


@dataclass
class RetentionRules:
    delete_after_days: int = 0
    max_files: int = 0
    max_bytes: int = 0

    @classmethod
    def of(cls, job: dict[str, Any]) -> RetentionRules:
        def num(key: str) -> int:
            value = job.get(key) or 0
            return value if isinstance(value, int) and value > 0 else 0

        return cls(num("delete_after"), num("max_files"), num("max_bytes"))

    @property
    def any(self) -> bool:
        return bool(self.delete_after_days or self.max_files or self.max_bytes)


def select_for_deletion(
    files: list[dict[str, Any]], rules: RetentionRules, now: datetime
) -> list[tuple[dict[str, Any], str]]:
    """Which of one job's files (oldest first, none deleted/archived) go, and why.

    Age first; then the oldest deletable files until at most ``max_files`` remain; then until the
    remaining sizes sum to at most ``max_bytes``. Files being written count but are never chosen.
    """
    chosen: list[tuple[dict[str, Any], str]] = []
    kept = list(files)
    if rules.delete_after_days:
        cutoff = now - timedelta(days=rules.delete_after_days)
        old = [f for f in kept if f.get("status") in DELETABLE and f["created"] < cutoff]
        chosen += [(f, "delete_after") for f in old]
        gone = {id(f) for f in old}
        kept = [f for f in kept if id(f) not in gone]
    if rules.max_files:
        excess = len(kept) - rules.max_files
        for f in [f for f in kept if f.get("status") in DELETABLE][: max(excess, 0)]:
            chosen.append((f, "max_files"))
            kept.remove(f)
    if rules.max_bytes:
        total = sum(int(f.get("size_bytes") or 0) for f in kept)
        for f in [f for f in kept if f.get("status") in DELETABLE]:
            if total <= rules.max_bytes:
                break
            chosen.append((f, "max_bytes"))
            total -= int(f.get("size_bytes") or 0)
    return chosen


class Janitor:
    """One janitor's passes over the files of every recording job."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        storage_root: Path,
        node_id: str,
        bus: Bus | None = None,
        deleted_grace_s: float = 3600.0,
        orphan_grace_s: float = 3600.0,
        remove_orphans: bool = False,
        disk_warning_pct: float = 85.0,
        disk_critical_pct: float = 95.0,
        evict_when_critical: bool = False,
        settings: Any = None,
    ) -> None:
        self.db = db
        self.root = Path(storage_root)
        self.node_id = node_id
        self.bus = bus
        self.deleted_grace_s = deleted_grace_s
        self.orphan_grace_s = orphan_grace_s
        self.remove_orphans = remove_orphans
        self.disk_warning_pct = disk_warning_pct
        self.disk_critical_pct = disk_critical_pct
        self.evict_when_critical = evict_when_critical
        self.settings = settings
        """When given, the watermarks are read from it at each pass (runtime settings)."""
        self.disk_level: DiskLevel = "ok"
        """The level of the last pass; an event goes out only when it changes."""
        self._lock = asyncio.Lock()

    async def run_pass(self, now: datetime | None = None) -> PassReport:
        """One whole pass at ``now`` (default: the clock); one at a time per instance."""
        async with self._lock:
            now = now or utcnow()
            if self.settings is not None:  # /api/settings/update applies without a restart
                self.disk_warning_pct = float(self.settings.disk_warning_pct)
                self.disk_critical_pct = float(self.settings.disk_critical_pct)
            report = PassReport(node=self.node_id, started=utcnow())
            await self._mark_missing(report)
            await self._retention(report, now)
            await self._purge_deleted(report, now)
            await self._orphans(report, now)
            if self.evict_when_critical:
                await self._evict(report, now)
            await self._disk(report)
            report.finished = utcnow()
            log.info(
                "janitor_pass",
                deleted=len(report.deleted),
                missing=len(report.missing),
                orphans=len(report.orphans),
                errors=len(report.errors),
            )
            return report

    # -- vanished files -------------------------------------------------------------------

    async def _mark_missing(self, report: PassReport) -> None:
        files = self.db[Collections.FILES]
        projection = {"file_path": 1, "local_removed_at": 1}
        async for doc in files.find({"status": "ready"}, projection):
            if doc.get("local_removed_at"):
                continue  # uploaded, verified, then removed here on purpose (issue 24)
            path = doc.get("file_path") or ""
            if not is_under(self.root, path):
                report.errors.append(f"file {doc['_id']}: path outside the storage root")
                continue
            if await asyncio.to_thread(os.path.exists, path):
                continue
            result = await files.update_one(
                {"_id": doc["_id"], "status": "ready"},
                {
                    "$set": {
                        "status": "failed",
                        "failure_reason": "missing",
                        "failed_at": utcnow(),
                        "modified": utcnow(),
                    }
                },
            )
            if result.modified_count:
                report.missing.append(str(doc["_id"]))
                log.warning("file_missing", file_id=str(doc["_id"]), path=path)

    # -- retention ------------------------------------------------------------------------

    async def _retention(self, report: PassReport, now: datetime) -> None:
        projection = {"delete_after": 1, "max_files": 1, "max_bytes": 1, "tenant": 1}
        rules_of: dict[str, RetentionRules] = {}
        async for job in self.db[Collections.RECORDINGS].find({}, projection):
            rules = RetentionRules.of(job)
            if rules.any:
                rules_of[str(job["_id"])] = rules
        if not rules_of:
            return
        # The files of each job with rules, by top-level equality on its id (an index on both
        # servers; the local FerretDB would read every file record for an `$in`).
        files_of: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in rules_of}
        found = await find_each(self.db[Collections.FILES], "entity_id", rules_of)
        for record in sorted(found, key=lambda r: (r["created"], r["_id"])):
            if record.get("status") not in COUNTED_OUT:
                files_of[record["entity_id"]].append(record)
        for job_id, rules in rules_of.items():
            for record, reason in select_for_deletion(files_of[job_id], rules, now):
                await self._delete(report, record, reason, now)

    async def _delete(
        self, report: PassReport, record: dict[str, Any], reason: str, now: datetime
    ) -> None:
        files = self.db[Collections.FILES]
        claimed = await files.find_one_and_update(
            {"_id": record["_id"], "status": record["status"]},
            {"$set": {"status": "deleted", "deleted_at": now, "deleted_by": self.node_id,
                      "delete_reason": reason, "modified": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if claimed is None:  # another janitor (or the API) got there first
            return
        try:
            await delete_object_of(self.db, self.settings, claimed)
            await asyncio.to_thread(delete_file_record_from_disk, self.root, claimed)
        except Exception as exc:
            # Left `deleted`: the purge retries it after the grace period.
            report.errors.append(f"file {record['_id']}: {exc}")
            return
        await files.delete_one({"_id": claimed["_id"], "deleted_by": self.node_id})
        await self._removed(report, claimed, reason)

    async def _purge_deleted(self, report: PassReport, now: datetime) -> None:
        files = self.db[Collections.FILES]
        cutoff = now - timedelta(seconds=self.deleted_grace_s)
        query = {
            "status": "deleted",
            "$or": [{"deleted_at": {"$lt": cutoff}},
                    {"deleted_at": {"$exists": False}, "modified": {"$lt": cutoff}}],
        }  # fmt: skip
        ids = [doc["_id"] async for doc in files.find(query, {"_id": 1})]
        for file_id in ids:
            current = await files.find_one({"_id": file_id, "status": "deleted"})
            if current is None:
                continue
            try:  # the object first: a record whose object stays is kept, and retried next pass
                await delete_object_of(self.db, self.settings, current)
            except Exception as exc:
                report.errors.append(f"file {file_id}: object not deleted ({exc})")
                continue
            record = await files.find_one_and_delete({"_id": file_id, "status": "deleted"})
            if record is None:
                continue
            try:
                await asyncio.to_thread(delete_file_record_from_disk, self.root, record)
            except Exception as exc:
                report.errors.append(f"file {file_id}: {exc}")
            await self._removed(report, record, "purge")

    async def _removed(self, report: PassReport, record: dict[str, Any], reason: str) -> None:
        job_id = str(record.get("entity_id", ""))
        report.deleted.append(
            RemovedFile(
                id=str(record["_id"]),
                job_id=job_id,
                file_name=str(record.get("file_name", "")),
                size_bytes=int(record.get("size_bytes") or 0),
                reason=reason,  # type: ignore[arg-type]
            )
        )
        log.info("file_deleted", file_id=str(record["_id"]), job_id=job_id, reason=reason)
        if self.bus is None or not _JOB_DIR.match(job_id):
            return
        try:
            event = FileDeleted(
                module=MODULE,
                job_id=job_id,
                tenant=str(record.get("tenant", "")),
                node=self.node_id,
                reason=reason,
                file=present_file(record),
            )
            await self.bus.publish(self.bus.subjects.event(MODULE, job_id, "file_deleted"), event)
        except Exception as exc:
            log.warning("event_not_sent", job_id=job_id, event="file_deleted", error=str(exc))

    # -- disk watermarks -------------------------------------------------------------------

    def _disk_now(self) -> Any:
        return disk_state(
            self.root, warning_pct=self.disk_warning_pct, critical_pct=self.disk_critical_pct
        )

    async def _evict(self, report: PassReport, now: datetime) -> None:
        """At the critical level: delete the oldest expendable files until it is left."""
        try:
            if (await asyncio.to_thread(self._disk_now)).level != "critical":
                return
        except OSError as exc:
            report.errors.append(f"disk check: {exc}")
            return
        files = self.db[Collections.FILES]
        query = {"status": {"$in": list(DELETABLE)}}
        candidates = [f async for f in files.find(query).sort("created", 1)]
        newest: dict[str, Any] = {}  # each job's newest ready file stays
        for record in candidates:
            if record["status"] == "ready":
                newest[record["entity_id"]] = record["_id"]
        protected = set(newest.values())
        for record in candidates:
            if record["_id"] in protected:
                continue
            await self._delete(report, record, "evicted", now)
            if (await asyncio.to_thread(self._disk_now)).level != "critical":
                return
        log.warning("eviction_exhausted", evicted=len([d for d in report.deleted
                                                        if d.reason == "evicted"]))  # fmt: skip

    async def _disk(self, report: PassReport) -> None:
        """Publish ``disk_warning`` when the level rises to warning/critical (once per change)."""
        try:
            disk = await asyncio.to_thread(
                disk_state,
                self.root,
                warning_pct=self.disk_warning_pct,
                critical_pct=self.disk_critical_pct,
            )
        except OSError as exc:
            report.errors.append(f"disk check: {exc}")
            return
        previous, self.disk_level = self.disk_level, disk.level
        if disk.level == previous:
            return
        (log.info if disk.level == "ok" else log.warning)(
            "disk_level_changed",
            level=disk.level,
            previous=previous,
            used_pct=round(disk.used_pct, 1),
            free_bytes=disk.free,
        )
        if disk.level == "ok" or self.bus is None:
            return
        event = DiskWarning(
            node=self.node_id,
            level=disk.level,
            used_pct=round(disk.used_pct, 2),
            warning_pct=disk.warning_pct,
            critical_pct=disk.critical_pct,
            total_bytes=disk.total,
            free_bytes=disk.free,
            reason=disk.describe(),
        )
        try:
            await self.bus.publish(self.bus.subjects.storage_event("disk_warning"), event)
        except Exception as exc:
            self.disk_level = previous  # try again on the next pass
            log.warning("event_not_sent", event="disk_warning", error=str(exc))

    # -- orphans --------------------------------------------------------------------------

    async def _orphans(self, report: PassReport, now: datetime) -> None:
        known: dict[str, set[str]] = {}
        async for doc in self.db[Collections.FILES].find({}, {"entity_id": 1, "file_path": 1}):
            known.setdefault(str(doc.get("entity_id")), set()).add(str(doc.get("file_path")))
        found = await asyncio.to_thread(self._scan, known, now)
        for path, size in found:
            removed = False
            if self.remove_orphans:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed = True
            report.orphans.append(Orphan(path=str(path), size_bytes=size, removed=removed))
            log.warning("orphan_file", path=str(path), size_bytes=size, removed=removed)

    def _scan(self, known: dict[str, set[str]], now: datetime) -> list[tuple[Path, int]]:
        """Unrecorded, visible, old-enough files in ``<root>/<job id>/`` folders."""
        root = self.root.resolve()
        if not root.is_dir():
            return []
        cutoff = now.timestamp() - self.orphan_grace_s
        found = []
        for folder in sorted(root.iterdir()):
            if not _JOB_DIR.match(folder.name) or not folder.is_dir() or folder.is_symlink():
                continue
            names = known.get(folder.name, set())
            listed = {str(Path(p).resolve()) for p in names}
            for playlist in [Path(p) for p in names if p.endswith(".m3u8")]:
                listed |= {str(s.resolve()) for s in hls_segments(playlist)}
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith(".") or not entry.is_file() or entry.is_symlink():
                    continue
                if str(entry.resolve()) in listed:
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if stat.st_mtime <= cutoff:
                    found.append((entry, stat.st_size))
        return found
