"""File processing that needs no job lease: copying FFmpeg runs, and ``reprocessFile``.

``reprocessFile`` (API) marks a ``ready`` or ``failed`` file ``processing`` with ``reprocess:
true``; any recorder node claims it here by a short per-file lease (``reprocess_node``,
``reprocess_until``, renewed while it works, so a node that dies mid-way is replaced), then:

- the file is gone: ``failed`` with reason ``missing`` (``file_failed``);
- else it is remuxed without re-encoding into a temporary file (MP4 fast-start; an MKV cut by a
  kill gets its index and duration back) that replaces the original, probed, and its integrity
  report renewed: ``processing_started``, ``processing_complete``, ``file_ready``. An HLS
  playlist is probed only;
- FFmpeg fails: the original is untouched, the file goes back to its earlier status with
  ``processing_error`` (``processing_failed``). Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.events import build_event
from reelhouse.common.ffmpeg.probe import probe_file
from reelhouse.common.files import checked_path, hls_segments, present_file, upload_queued
from reelhouse.common.jobs.lease import as_aware
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Event
from reelhouse.recorder.settings import RecorderSettings

log = get_logger("reelhouse.recorder.processing")


ProgressCallback = Callable[[float], Awaitable[None]]


async def ffmpeg_copy(
    ffmpeg: str,
    input_args: list[str],
    out: Path,
    *,
    faststart: bool,
    total_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every_s: float = 1.0,
) -> str | None:
    """``ffmpeg <input_args> -map 0 -c copy [+faststart] -y out`` reading local files only;
    None, or FFmpeg's error (``out`` is removed then).

    With ``on_progress`` and the media's ``total_s``, FFmpeg's ``-progress`` output is turned
    into a percentage, reported at most every ``progress_every_s`` and always at the end.
    """
    argv = [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-progress", "pipe:1", "-nostats",
        "-protocol_whitelist", "file", *input_args,
        "-map", "0", "-c", "copy", *(["-movflags", "+faststart"] if faststart else []),
        "-y", str(out),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())
    loop = asyncio.get_running_loop()
    last_report = -progress_every_s
    out_s = 0.0
    async for raw in proc.stdout:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        if key == "out_time_us" and value.lstrip("-").isdigit():
            out_s = max(out_s, int(value) / 1e6)
        elif key == "progress" and on_progress is not None and total_s:
            ended = value == "end"
            if ended or loop.time() - last_report >= progress_every_s:
                last_report = loop.time()
                pct = 100.0 if ended else min(99.9, 100.0 * out_s / total_s)
                with contextlib.suppress(Exception):
                    await on_progress(round(pct, 1))
    await proc.wait()
    err = await errors
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(out.unlink)
        return err.decode(errors="replace").strip()[-500:] or f"ffmpeg rc {proc.returncode}"
    return None


class Reprocessor:
    """Claims and runs ``reprocessFile`` requests for one recorder node."""

    def __init__(
        self, *, db: AsyncDatabase, bus: Bus, settings: RecorderSettings, node_id: str
    ) -> None:
        self._files = db[Collections.FILES]
        self._bus = bus
        self._settings = settings
        self._node_id = node_id
        self._lease_s = float(settings.lease_s)

    async def run_pending(self) -> int:
        """Reprocess every requested file this node can claim; returns how many it did."""
        done = 0
        while (record := await self._claim()) is not None:
            keeper = asyncio.create_task(self._keep(record["_id"]))
            try:
                await self._reprocess(record)
            except Exception as exc:
                log.exception("reprocess_failed", file_id=str(record["_id"]))
                await self._give_back(record, f"reprocess failed: {exc}")
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            done += 1
        return done

    @staticmethod
    def claimable(doc: dict[str, Any], now: datetime) -> bool:
        """Whether a file record (read with ``status``, ``reprocess``, ``reprocess_until``) is a
        request :meth:`run_pending` would take now."""
        if doc.get("status") != "processing" or doc.get("reprocess") is not True:
            return False
        until = doc.get("reprocess_until")
        return until is None or as_aware(until, now) < now

    async def _claim(self) -> dict[str, Any] | None:
        now = utcnow()
        return await self._files.find_one_and_update(
            {"status": "processing", "reprocess": True,
             "$or": [{"reprocess_until": {"$exists": False}}, {"reprocess_until": {"$lt": now}}]},
            {"$set": {"reprocess_node": self._node_id,
                      "reprocess_until": now + timedelta(seconds=self._lease_s)}},
            sort=[("reprocess_requested_at", 1)],
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip

    async def _keep(self, file_id: Any) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            until = utcnow() + timedelta(seconds=self._lease_s)
            await self._files.update_one(
                {"_id": file_id, "reprocess_node": self._node_id},
                {"$set": {"reprocess_until": until}},
            )

    async def _reprocess(self, record: dict[str, Any]) -> None:
        path = checked_path(self._settings.storage_root, record["file_path"])
        if not await asyncio.to_thread(path.exists):
            await self._finish(record, "failed", event="file_failed", failure_reason="missing",
                               failed_at=utcnow())  # fmt: skip
            return
        await self._event(record, "processing_started")
        if path.suffix != ".m3u8":
            temp = path.with_name(f".reprocess-{record['_id']}{path.suffix}")
            error = await ffmpeg_copy(
                self._settings.ffmpeg_path,
                ["-i", str(path)],
                temp,
                faststart=path.suffix == ".mp4",
                total_s=(record.get("duration_ms") or 0) / 1000,
                on_progress=lambda pct: self._event(record, "processing_progress", progress=pct),
            )
            if error is not None:
                await self._give_back(record, error)
                return
            await asyncio.to_thread(temp.replace, path)
        facts = await probe_file(path)
        size = facts.size_bytes
        if path.suffix == ".m3u8":
            for segment in await asyncio.to_thread(hls_segments, path):
                with contextlib.suppress(OSError):
                    size += segment.stat().st_size
        now = utcnow()
        integrity = dict(record.get("integrity") or {"parts": 1, "gaps": []})
        integrity.update(duration_ms=facts.duration_ms, streams=list(facts.streams), checked_at=now)
        integrity.pop("join_failed", None)
        await self._finish(
            record, "ready", event="processing_complete", size_bytes=size,
            duration_ms=facts.duration_ms, integrity=integrity, ready_at=now, reprocessed_at=now,
        )  # fmt: skip

    async def _give_back(self, record: dict[str, Any], error: str) -> None:
        """FFmpeg could not remux it: the file keeps its earlier status, with the error."""
        log.warning("reprocess_error", file_id=str(record["_id"]), error=error[:300])
        status = record.get("status_before") or "ready"
        await self._finish(
            record, status, event="processing_failed", processing_error=error, reason=error
        )

    async def _finish(self, record: dict[str, Any], status: str, *, event: Event,
                      reason: str | None = None, **fields: Any) -> None:  # fmt: skip
        now = utcnow()
        if status == "ready" and "upload" not in record:  # queued for its job's target, if any
            fields.update(upload_queued(await self._storage_of(record), now))
        done = await self._files.find_one_and_update(
            {"_id": record["_id"], "reprocess_node": self._node_id},
            {"$set": {"status": status, "modified": now, **fields},
             "$unset": {"reprocess": "", "reprocess_node": "", "reprocess_until": "",
                        "status_before": ""}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        if done is None:
            return  # removed meanwhile, or another node took over
        log.info("file_reprocessed", file_id=str(record["_id"]), status=status)
        await self._event(done, event, reason=reason)
        if event == "processing_complete" and status == "ready":
            await self._event(done, "file_ready")

    async def _storage_of(self, record: dict[str, Any]) -> str | None:
        """The storage target of the record's job (issue 24), or None."""
        with contextlib.suppress(Exception):  # not an ObjectId: no job, no target
            job = await self._files.database[Collections.RECORDINGS].find_one(
                {"_id": ObjectId(str(record.get("entity_id")))}, {"storage_id": 1}
            )
            return (job or {}).get("storage_id") or None
        return None

    async def _event(
        self,
        record: dict[str, Any],
        event: Event,
        reason: str | None = None,
        progress: float | None = None,
    ) -> None:
        fields: dict[str, Any] = {"file": present_file(record)}
        if reason:
            fields["reason"] = reason[:500]
        if progress is not None:
            fields["progress_pct"] = progress
        try:
            message = build_event(
                event, module="recording", job_id=record["entity_id"], tenant=record["tenant"],
                node=self._node_id, **fields,
            )  # fmt: skip
            subject = self._bus.subjects.event("recording", record["entity_id"], event)
            await self._bus.publish(subject, message)
        except Exception as exc:
            log.debug("event_not_published", event_name=event, error=str(exc))
