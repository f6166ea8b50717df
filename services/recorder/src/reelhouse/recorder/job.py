"""One claimed recording job: its supervised FFmpeg, its file parts, its stats and events.

Each FFmpeg (re)start writes a new *part* (a new file, or a new run of segments), so nothing already
written is ever overwritten. Infinity mode: the part's file record is created when FFmpeg first
reports progress (the output is open) and finalised (size and duration from the file) when FFmpeg
exits. Split mode: the segment muxer's CSV list says when a segment is complete; each listed
segment becomes a record at once, and a sweep of the job folder after every exit registers a
segment cut short by a crash.

Seamless jobs (docs/ARCHITECTURE.md §5): every part of one session (source drops,
failovers, pause/resume) stays ``recording`` until the session ends (stop, restart, update), then
the parts are joined without re-encoding into one file with an integrity report. An m3u8 session
is not joined: each part continues the session's playlist after an ``#EXT-X-DISCONTINUITY``.
With ``seamless_reconnect_s``, a source away longer than that ends the live session: the parts so
far are joined at once, and the source's return begins a new file.

Quota (``max_bytes_total``): what the job's folder holds (the part being written included) is
checked about once a second while media flows; reaching it sets the job inactive, publishes
``quota_exceeded`` and a stop hint, and the lease protocol stops FFmpeg like any stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.contracts.recording import FILE_EXTENSIONS, RecordingIn
from reelhouse.common.credentials import cached_sealer, load_auth
from reelhouse.common.ffmpeg.failures import classify_lines
from reelhouse.common.ffmpeg.probe import FileFacts, probe_file
from reelhouse.common.ffmpeg.progress import ProgressSnapshot
from reelhouse.common.ffmpeg.recording_args import build_recording_args, hls_segment_pattern
from reelhouse.common.ffmpeg.supervisor import SupervisorState
from reelhouse.common.files import (
    FILE_TIME_FORMAT,
    FILE_VISIBILITY_PUBLIC,
    MODULE_RECORDINGS,
    checked_path,
    file_name,
    hls_entries,
    hls_segments,
    job_dir,
    present_file,
    slugify,
    upload_queued,
)
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.jobs.run import SupervisedRun
from reelhouse.common.mongo import Collections
from reelhouse.recorder.feed import open_stream
from reelhouse.recorder.processing import ProgressCallback, ffmpeg_copy
from reelhouse.recorder.settings import RecorderSettings

_INPUT_STORED_ONLY = {"_id", "tenant", "entity_id", "created", "modified"}


def recording_config(job: dict[str, Any], input_doc: dict[str, Any]) -> RecordingIn:
    """The stored job and input as the validated create body they came from."""
    fields = {k: v for k, v in job.items() if k in RecordingIn.model_fields and k != "input"}
    inp = {k: v for k, v in input_doc.items() if k not in _INPUT_STORED_ONLY}
    return RecordingIn.model_validate({**fields, "input": inp})


QUOTA_CHECK_S = 1.0
"""Seconds between two looks at a job's stored bytes against its quota while it records."""

_NOT_COUNTED = (".thumb-", ".part-", ".join-")
"""Hidden files of a job folder that are not recordings (thumbnail, segment lists, a join's
temporary copy) and do not count against the quota."""

GAP_MIN_MS = 1000
"""Time between two parts of a session below which it is not reported as a gap."""


OVERLAP_MIN_MS = 200
"""Overlap of two parts (a make-before-break handover, a node back from a NATS partition) from
which the join skips the later part's first seconds."""


def part_periods(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each part's media period on the wall clock: it ends when its file was last written and
    began its media duration earlier (or when the part started, without a duration)."""

    def began(part: dict[str, Any]) -> datetime:
        if part.get("duration_ms"):
            # A publisher gap inside the part (an ingest input) took wall-clock time, not media.
            held = sum(g["duration_ms"] for g in part.get("source_gaps") or ())
            return part["part_ended_at"] - timedelta(milliseconds=part["duration_ms"] + held)
        return part["part_started_at"]

    return [{"from": began(p), "to": p["part_ended_at"], "duration_ms": p.get("duration_ms")}
            for p in parts]  # fmt: skip


def overlaps_s(parts: list[dict[str, Any]]) -> list[float]:
    """Per part, how many seconds at its start repeat the previous part's media (0.0 if none):
    what the join skips (the concat demuxer's ``inpoint``)."""
    periods = part_periods(parts)
    out = [0.0]
    for prev, nxt in itertools.pairwise(periods):
        overlap_ms = (prev["to"] - nxt["from"]).total_seconds() * 1000
        out.append(round(overlap_ms / 1000, 3) if overlap_ms >= OVERLAP_MIN_MS else 0.0)
    return out


def integrity_report(parts: list[dict[str, Any]], facts: FileFacts) -> dict[str, Any]:
    """What the joined file holds against what the wall clock says, and where the gaps are.

    Each part's media ends when its file was last written and began its media duration
    earlier; the time between one part's end and the next one's beginning that no media
    covers is a gap (reported from one second), caused by a ``pause`` or an ``interruption``
    (source drop, FFmpeg restart, failover). A part of an ingest input may also hold a
    ``publisher_gap`` (``in_part``): the publisher was away and came back within the fan-out's
    hold, so the media runs on and the wall clock shows the gap.
    """

    periods = part_periods(parts)
    gaps = []
    for index, part in enumerate(parts):  # publisher gaps an ingest fan-out held a part through
        gaps += [{"in_part": index + 1, "from": g["from"], "to": g["to"],
                  "duration_ms": g["duration_ms"], "cause": "publisher_gap"}
                 for g in part.get("source_gaps") or ()]  # fmt: skip
    for index, (prev, nxt) in enumerate(itertools.pairwise(periods)):
        gap_ms = int((nxt["from"] - prev["to"]).total_seconds() * 1000)
        if gap_ms >= GAP_MIN_MS:
            cause = "pause" if parts[index].get("ended_by") == "pause" else "interruption"
            gaps.append({"after_part": index + 1, "from": prev["to"], "to": nxt["from"],
                         "duration_ms": gap_ms, "cause": cause})  # fmt: skip
    expected = periods[-1]["to"] - periods[0]["from"]
    overlaps = [{"after_part": index, "duration_ms": int(seconds * 1000), "removed": True}
                for index, seconds in enumerate(overlaps_s(parts)) if seconds > 0]  # fmt: skip
    return {
        "parts": len(parts),
        "overlaps": overlaps,
        "duration_ms": facts.duration_ms,
        "expected_ms": int(expected.total_seconds() * 1000),
        "gaps": gaps,
        "periods": periods,
        "streams": list(facts.streams),
        "checked_at": utcnow(),
    }


class RecordingRun(SupervisedRun):
    """Runs and watches one recording job while this node holds its lease."""

    module = "recording"

    def __init__(
        self,
        *,
        lease: Lease,
        config: RecordingIn,
        leases: LeaseStore,
        db: AsyncDatabase,
        bus: Bus,
        settings: RecorderSettings,
        node_id: str,
    ) -> None:
        self.config = config
        self._db = db
        self._dir = job_dir(settings.storage_root, str(lease.job_id))
        self._slug = slugify(config.recording_name)
        self._ext = FILE_EXTENSIONS[config.output_format]
        self._split = (
            config.recording_mode == "RECORDING_MODE_SPLIT_BY_TIME"
            and config.output_format != "m3u8"
        )
        self._seamless = config.is_seamless  # parts of a session are joined when it ends
        self._hls_continues = self._seamless and self._ext == "m3u8"  # one playlist per session
        self._hls_from = 0  # continued playlist: segments listed before the current part
        self._part = 0
        self._part_gaps: list[dict[str, Any]] = []  # publisher gaps held within the part
        # Files this run has closed (or is closing): they have a record, or are about to; the
        # sweep for files without one must not close them a second time while that record's
        # write is still under way (it then made two records of one file).
        self._closed_names: set[str] = set()
        self._part_path: Path | None = None  # infinity mode: the current part's file
        self._part_started = utcnow()  # wall-clock start of the current part
        self._list_base: float | None = None  # split mode: media time of the part's first cut
        self._part_record: ObjectId | None = None
        self._segment_list: Path | None = None  # split mode: the current part's CSV list
        self._list_offset = 0
        self._opened: set[str] = set()  # split mode: segment names announced as opened
        self._seg_prefix: str | None = None  # split mode: the current process's segment names
        self._part_bytes = 0  # split mode: bytes of the current process's completed segments
        # m3u8: (segment name pattern, next segment number, bytes of the process's done ones)
        self._hls_written: tuple[str, int, int] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._degraded: str | None = None  # why the job cannot record right now (disk full)
        # The live JPEG output; dropped for good if the source turns out to have no video.
        self._thumbnail = settings.thumbnails and config.output_format != "mp3"
        self._aligned = self._split and config.recording_mode_settings.align_to_clock
        self._quota = config.max_bytes_total  # bytes; 0: none
        self._quota_checked = 0.0  # monotonic time of the last quota check
        self._quota_hit = False
        self._reconnect_s = config.seamless_reconnect_s if self._seamless else 0
        self._drop_timer: asyncio.Task[None] | None = None  # ends the session after a long drop
        self._drop_joining = False
        super().__init__(lease=lease, leases=leases, bus=bus, settings=settings, node_id=node_id)
        self.supervisor.size_source = self._written_bytes

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous owner left, then start FFmpeg."""
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        await self._recover_previous_parts()
        if self._quota and await self._check_quota():
            return  # already full: the job is stopped, FFmpeg is never started
        self.supervisor.start()
        if self._split:
            self._watch_task = asyncio.create_task(self._watch_segments(), name="segments")

    async def _after_stop(self) -> None:
        """Register the last files (FFmpeg has written its trailer)."""
        if self._drop_timer is not None:
            if not self._drop_joining:
                self._drop_timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drop_timer
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self._sweep()
        if not self._seamless:
            return
        job = await self._job_state()
        if job is not None and job.get("paused") and self._part_record is not None:
            # The gap that follows is a pause, not an interruption (integrity report).
            await self._db[Collections.FILES].update_one(
                {"_id": self._part_record}, {"$set": {"ended_by": "pause"}}
            )
        if self._ended(job, self.lease.generation) and self._holds(job):
            await self._join_session(self.lease.generation)

    def _holds(self, job: dict[str, Any] | None) -> bool:
        """Whether this node still holds the job (the document names it and the live plane does
        not name another owner). A node that was taken over leaves the join to the holder: two
        joins of one session at once would remove each other's files."""
        runtime = (job or {}).get("runtime")
        held = isinstance(runtime, dict) and runtime.get("node") == self._node_id
        held = held and self._leases.holds(self.lease)
        if not held:
            self._log.info("session_join_left_to_holder", session=self.lease.generation)
        return held

    async def finish_idle(self) -> None:
        """Under an idle lease (the job is stopped or paused; no FFmpeg runs): finish parts a
        dead owner left and join the sessions that have ended."""
        await self._recover_previous_parts()

    def _runtime_extra(self) -> dict[str, Any]:
        return {"part": self._part, "degraded": self._degraded}

    async def _state_changed(self, state: SupervisorState) -> None:
        if state is SupervisorState.RUNNING:
            self._degraded = None
            if self._drop_timer is not None and not self._drop_joining:
                self._drop_timer.cancel()  # back within the reconnect window: same session
                self._drop_timer = None
        elif (
            state is SupervisorState.RETRYING
            and self._reconnect_s
            and self.supervisor.ever_ran
            and self._drop_timer is None
            and not self._stopping
        ):
            self._drop_timer = asyncio.create_task(self._end_session_after_drop(), name="drop")

    async def _end_session_after_drop(self) -> None:
        """The source stayed away longer than ``seamless_reconnect_s``: the live session ends,
        its parts are joined now; the source's return begins a new file."""
        await asyncio.sleep(self._reconnect_s)
        if self._stopping or self.supervisor.state is SupervisorState.RUNNING:
            return
        self._drop_joining = True
        try:
            self._log.info("live_session_ended", away_s=self._reconnect_s)
            await self._join_session(self.lease.generation)
        except Exception as exc:
            self._log.warning("live_session_join_failed", error=str(exc)[:300])
        finally:
            self._drop_joining = False
            self._drop_timer = None

    # -- quota --------------------------------------------------------------------------------

    def _stored_bytes(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._dir) as entries:
            for entry in entries:
                if entry.name.startswith(_NOT_COUNTED):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file():
                        total += entry.stat().st_size
        return total

    async def _check_quota(self) -> bool:
        """Whether the job has reached ``max_bytes_total``; if so (once) stop it for good."""
        self._quota_checked = time.monotonic()
        stored = await asyncio.to_thread(self._stored_bytes)
        if stored < self._quota or self._quota_hit:
            return self._quota_hit
        self._quota_hit = True
        now = utcnow()
        reason = f"quota reached: {stored} bytes stored, max_bytes_total {self._quota}"
        self._log.warning("recording_quota_exceeded", stored_bytes=stored, quota=self._quota)
        await self._db[Collections.RECORDINGS].update_one(
            {"_id": self.lease.job_id, "generation": self.lease.generation},
            {"$set": {"active": False, "paused": False, "quota_exceeded_at": now,
                      "modified": now}},
        )  # fmt: skip
        await self._event("quota_exceeded", state="stopping", reason=reason)
        with contextlib.suppress(Exception):  # the owner (this node) stops at once, not later
            command = JobCommand(module="recording", verb="stop", job_id=self.job_id)
            await self._bus.publish(self._bus.subjects.command("recorder", "stop"), command)
        return True

    # -- FFmpeg arguments: one new part per (re)start -----------------------------------------

    async def _argv(self) -> list[str]:
        source = self.config.input
        # First: an ingest input waits here for its publisher, before the part is named.
        url = await self._source_url(source)
        self._part += 1
        self._part_gaps = []
        now = await self._fresh_second()
        self._part_started = now
        if self._split:
            # Numbered while written (hidden); renamed to <slug>-<media start time>.<ext> once
            # complete, so two cuts within one wall-clock second can never share a name.
            stamp = now.strftime("%Y%m%dT%H%M%S")
            target = self._dir / f".seg-{stamp}-%05d.{self._ext}"
            self._seg_prefix, self._part_bytes = f".seg-{stamp}-", 0
            self._segment_list = self._dir / f".part-{stamp}.csv"
            self._list_offset = 0
            self._list_base = None
            self._part_path = None
        else:
            playlist = await self._session_playlist() if self._hls_continues else None
            target = playlist or self._dir / file_name(self._slug, now, self._ext)
            self._hls_from = len(await asyncio.to_thread(hls_entries, playlist)) if playlist else 0
            self._part_path = target
            self._segment_list = None
            self._seg_prefix = None
            self._hls_written = None
            if self.config.output_format == "m3u8":
                self._hls_written = (str(hls_segment_pattern(target)), self._hls_from, 0)
        self._part_record = None
        if source.application == "IO_APPLICATION_STREAMLINK":
            # Resolved afresh at each start (an expired platform URL comes back renewed); a
            # source that is offline now fails this start, and the supervisor retries.
            # The tenant's credentials for the channel's platform, opened only here.
            auth = await load_auth(
                self._db, cached_sealer(self._settings), tenant=self.tenant,
                platform=str(source.input_settings.get("platform") or "url"),
            )  # fmt: skip
            stream = await asyncio.to_thread(
                open_stream, source.input_stream_url,
                quality=str(source.input_settings.get("quality") or "best"),
                proxy_url=self._proxy.url, timeout_s=10.0, options=auth.session,
                plugin_options=auth.plugin,
            )  # fmt: skip
            url = self.supervisor.open_feed(stream)
        overlay = self.config.overlay
        if overlay.type == "IMAGE" and overlay.image_url:
            await self._target(overlay.image_url, role="input", field="overlay.image_url")
        return build_recording_args(
            inp=source.model_copy(update={"input_stream_url": url}),
            job=self.config,
            target=target,
            segment_list=self._segment_list,
            hls_append=self._hls_from > 0,
            thumbnail=self._dir / ".thumb-%d.jpg" if self._thumbnail else None,
            probe_ms=self.probe_ms,
        )

    async def _session_playlist(self) -> Path | None:
        """The playlist an earlier part of this m3u8 session wrote (continued, not joined)."""
        doc = await self._db[Collections.FILES].find_one(
            {"entity_id": self.job_id, "seamless": True, "session": self.lease.generation,
             "status": "recording"},
            sort=[("part_started_at", 1)],
        )  # fmt: skip
        if doc is None:
            return None
        path = checked_path(self._settings.storage_root, doc["file_path"])
        return path if await asyncio.to_thread(path.exists) else None

    async def _fresh_second(self) -> datetime:
        """Now, moved on to a second no existing file of this job is named after."""
        while True:
            now = utcnow()
            stamp = now.strftime(FILE_TIME_FORMAT)
            taken = await asyncio.to_thread(
                lambda s=stamp: any(s in p.name for p in self._dir.iterdir())
            )
            if not taken:
                return now
            await asyncio.sleep(1.0 - now.microsecond / 1e6 + 0.01)

    # -- supervisor hooks ---------------------------------------------------------------------

    async def _before_progress(self, snapshot: ProgressSnapshot) -> None:
        if not self._split and self._part_record is None and self._part_path is not None:
            await self._open_part_record(snapshot)
        if (
            self._quota
            and not self._quota_hit
            and time.monotonic() - self._quota_checked >= QUOTA_CHECK_S
        ):
            await self._check_quota()

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._thumbnail and any("does not contain any stream" in x for x in stderr_tail):
            # An audio-only source: the thumbnail output has nothing to map; record without it.
            self._thumbnail = False
            self._log.info("thumbnail_disabled", reason="the source has no video")
        if not self._stopping and classify_lines(stderr_tail) == "disk_full":
            # Retrying at the usual pace would only fail again: wait, and say why, once.
            self.supervisor.delay_next_retry(self._settings.disk_full_retry_s)
            if self._degraded is None:
                line = next((x for x in reversed(stderr_tail) if "space" in x.lower()), "")
                self._degraded = f"disk full: {line.strip()[-300:]}"
                self._log.error("recording_disk_full", detail=self._degraded)
                await self._event("job_failed", state="retrying", reason=self._degraded)
        if self._split:
            await self._drain_segment_list()
        elif self._part_path is not None:
            hls_from = self._hls_from if self._hls_continues else None
            await self._close_part(
                self._part_path, self._part_record, started=self._part_started, hls_from=hls_from
            )
        await self._sweep()

    # -- file records -------------------------------------------------------------------------

    def _record(self, path: Path, *, status: str) -> dict[str, Any]:
        now = utcnow()
        record = {
            "_id": ObjectId(),
            "tenant": self.tenant,
            "file_name": path.name,
            "file_path": str(path),
            "module_name": MODULE_RECORDINGS,
            "file_visibility": FILE_VISIBILITY_PUBLIC,
            "output_format": self.config.output_format,
            "entity_name": self.config.recording_name,
            "entity_id": self.job_id,
            "size_bytes": 0,
            "duration_ms": 0,
            "status": status,
            "node": self._node_id,
            "part": self._part,
            "created": now,
            "modified": now,
        }
        if self._seamless:
            # A part of the session ``generation``: stays "recording" until the session ends.
            record.update(seamless=True, session=self.lease.generation,
                          part_started_at=self._part_started)  # fmt: skip
            if self._hls_continues:
                record["hls_from"] = self._hls_from
        return record

    async def _job_exists(self) -> bool:
        return (
            await self._db[Collections.RECORDINGS].count_documents(
                {"_id": self.lease.job_id}, limit=1
            )
            == 1
        )

    async def _publisher_gap(self, began: datetime, ended: datetime) -> None:
        """Kept on the open part's record: the join's integrity report lists it
        (``publisher_gap``) and counts it in the part's wall-clock span."""
        gap = {"from": began, "to": ended,
               "duration_ms": int((ended - began).total_seconds() * 1000)}  # fmt: skip
        self._log.info("publisher_gap", duration_ms=gap["duration_ms"], part=self._part)
        self._part_gaps.append(gap)  # a part whose record is made when it closes
        if self._part_record is None:
            return
        try:
            await self._db[Collections.FILES].update_one(
                {"_id": self._part_record}, {"$push": {"source_gaps": gap}}
            )
        except Exception as exc:
            self._log.warning("publisher_gap_not_recorded", error=str(exc)[:200])

    async def _open_part_record(self, snapshot: ProgressSnapshot) -> None:
        assert self._part_path is not None
        record = self._record(self._part_path, status="recording")
        if self._seamless:
            # When the media began (FFmpeg reports progress after probing the source).
            began = utcnow() - timedelta(seconds=snapshot.out_time_s or 0)
            record["part_started_at"] = max(self._part_started, began)
        try:
            if not await self._job_exists():
                return
            await self._db[Collections.FILES].insert_one(record)
        except Exception as exc:
            self._log.warning("file_record_failed", error=str(exc))
            return
        self._part_record = record["_id"]
        self._log.info("file_opened", file=record["file_name"], part=self._part)
        await self._event("file_opened", file=present_file(record))

    async def _facts(self, path: Path) -> tuple[int, FileFacts]:
        """Size (an HLS playlist counts its segments) and what ffprobe reads in the file."""
        facts = await probe_file(path)
        size = facts.size_bytes
        if path.suffix == ".m3u8":
            for segment in await asyncio.to_thread(hls_segments, path):
                with contextlib.suppress(OSError):
                    size += os.stat(segment).st_size
        return size, facts

    async def _close_part(
        self,
        path: Path,
        record_id: ObjectId | None,
        *,
        started: datetime | None = None,
        hls_from: int | None = None,
    ) -> None:
        """Finalise one file: size and duration from the file; drop an empty one.

        ``started``: when its media began (wall clock), for the integrity report of a file that
        becomes ``ready`` now. ``hls_from``: a part that continued a session's playlist after
        that many segments; its duration is that of its own segments.
        """
        if record_id is None and hls_from is None and path.name in self._closed_names:
            return  # this run closed it already: one file, one record
        self._closed_names.add(path.name)
        size, facts = await self._facts(path)
        duration, has_media = facts.duration_ms, bool(facts.streams)
        files = self._db[Collections.FILES]
        if hls_from:
            mine = (await asyncio.to_thread(hls_entries, path))[hls_from:]
            if not mine:  # this part wrote no segment: the playlist is the earlier parts'
                if record_id is not None:
                    await files.delete_one({"_id": record_id})
                return
            duration = int(sum(seconds for _, seconds in mine) * 1000)
        # A killed MKV/AVI has no duration in its header but plays: keep it (duration null).
        if size == 0 or not has_media:
            # Nothing playable was written (the source never delivered): no file to keep.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
            if record_id is not None:
                await files.delete_one({"_id": record_id})
            return
        now = utcnow()
        status = "recording" if self._seamless else "ready"
        closed: dict[str, Any] = {"status": status, "size_bytes": size, "duration_ms": duration,
                                  "closed_at": now, "modified": now}  # fmt: skip
        mtime = datetime.fromtimestamp((await asyncio.to_thread(os.stat, path)).st_mtime, UTC)
        ended = min(now, mtime)
        if self._seamless:
            closed["part_ended_at"] = ended
        else:
            began = started or ended - timedelta(milliseconds=duration or 0)
            part = {"part_started_at": min(began, ended), "part_ended_at": ended,
                    "duration_ms": duration, "source_gaps": self._part_gaps}  # fmt: skip
            report = integrity_report([part], facts)
            if started is not None:  # the wall clock's span, against the media's duration
                report["expected_ms"] = max(0, int((ended - started).total_seconds() * 1000))
            closed.update(ready_at=now, integrity=report)
            closed.update(upload_queued(self.config.storage_id, now))  # issue 24
        if record_id is None:
            if not await self._job_exists():
                return
            record = self._record(path, status=status)
            record.update(closed)
            if self._seamless:
                record["part_started_at"] = closed["part_ended_at"] - timedelta(
                    milliseconds=duration or 0
                )
            await files.insert_one(record)
        else:
            record = await files.find_one_and_update(
                {"_id": record_id}, {"$set": closed}, return_document=True
            )
            if record is None:  # removed meanwhile
                return
        self._log.info("file_closed", file=path.name, size_bytes=size, duration_ms=duration)
        await self._event("file_closed", file=present_file(record))
        if self.lease.doc.get("channel_id"):
            # The channel recorder's name for a captured part or segment (the seed's event).
            await self._event("segment_downloaded", file=present_file(record))
        if status == "ready":
            await self._event("file_ready", file=present_file(record))

    async def _known_names(self) -> set[str]:
        cursor = self._db[Collections.FILES].find({"entity_id": self.job_id}, {"file_name": 1})
        return {doc["file_name"] async for doc in cursor}

    def _own_files(self) -> list[Path]:
        if not self._dir.is_dir():
            return []
        return sorted(
            p
            for p in self._dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix == f".{self._ext}"
        )

    async def _sweep(self) -> None:
        """Register files of this job that have no record (a part or segment cut short)."""
        for segment in await asyncio.to_thread(self._stray_segments):
            facts = await probe_file(segment)
            mtime = datetime.fromtimestamp(os.stat(segment).st_mtime, UTC)
            start = mtime - timedelta(milliseconds=facts.duration_ms or 0)
            await self._adopt_segment(segment, start)
        known = await self._known_names()
        current = self._part_path.name if self._part_path and not self._stopping else None
        for path in await asyncio.to_thread(self._own_files):
            if path.name not in known and path.name != current:
                if path.name in self._closed_names:
                    continue
                await self._close_part(path, None)

    async def _recover_previous_parts(self) -> None:
        """Finalise records a dead owner left in status ``recording``, register stray files, and
        join every session that has ended (parts left ``processing`` by a join that died with
        its node are joined again: the lease says nobody else is at it)."""
        query = {
            "entity_id": self.job_id,
            "reprocess": {"$ne": True},
            "$or": [{"status": "recording"}, {"status": "processing", "seamless": True}],
        }
        sessions: set[int] = set()
        async for record in self._db[Collections.FILES].find(query):
            if record.get("seamless"):
                sessions.add(int(record.get("session", 0)))
            if record.get("part_ended_at") is not None or record["status"] != "recording":
                continue  # a closed part of a session: joined when its session ends
            writer = record.get("node")
            if writer and writer != self._node_id and self._leases.live.alive(writer, "recorder"):
                # A live node still writes it (a make-before-break handover): it closes it.
                self._log.info("file_left_to_its_writer", file=record["file_name"], node=writer)
                continue
            self._log.info("file_recovered", file=record["file_name"], node=writer)
            await self._close_part(
                Path(record["file_path"]),
                record["_id"],
                started=record.get("part_started_at") or record.get("created"),
                hls_from=record.get("hls_from"),
            )
        await self._sweep()
        job = await self._job_state()
        for session in sorted(sessions):  # stopped, restarted or updated while nobody ran it
            if self._ended(job, session):
                await self._join_session(session)

    # -- seamless sessions --------------------------------------------------------------------

    async def _job_state(self) -> dict[str, Any] | None:
        return await self._db[Collections.RECORDINGS].find_one(
            {"_id": self.lease.job_id},
            {"active": 1, "paused": 1, "generation": 1, "runtime.node": 1},
        )

    @staticmethod
    def _ended(job: dict[str, Any] | None, session: int) -> bool:
        """Whether ``session`` is over (stopped, restarted or updated), not just handed over or
        paused."""
        if job is None:
            return False  # being removed: its files go with it
        return not job.get("active") or int(job.get("generation", 0)) != session

    async def _join_session(self, session: int) -> None:
        """Join the parts of an ended session, without re-encoding, into one fast-start file.

        The joined file takes the first part's name and record (status ``processing`` while
        FFmpeg copies, then ``ready`` with an integrity report: real and expected duration and
        the gaps between parts). If the join fails, the parts become ``ready`` one by one.
        """
        files = self._db[Collections.FILES]
        query = {"entity_id": self.job_id, "session": session, "seamless": True,
                 "status": {"$in": ["recording", "processing"]}, "reprocess": {"$ne": True},
                 "part_ended_at": {"$exists": True}}  # fmt: skip
        parts = sorted([doc async for doc in files.find(query)], key=lambda d: d["part_started_at"])
        if not parts:
            return
        ids = [p["_id"] for p in parts]
        started = utcnow()
        await files.update_many(
            {"_id": {"$in": ids}},
            {"$set": {"status": "processing", "processing_started_at": started,
                      "modified": started}},
        )  # fmt: skip
        first = parts[0]
        await self._event(
            "processing_started", file=present_file({**first, "status": "processing"})
        )
        paths = [checked_path(self._settings.storage_root, p["file_path"]) for p in parts]
        final = Path(first["file_path"])
        if self._ext == "m3u8":  # one playlist continued by every part: nothing to join
            _, facts = await self._facts(final)
            await self._session_ready(session, parts, final, facts)
            return
        joined = self._dir / f".join-{first['_id']}.{self._ext}"
        listing = self._dir / f".join-{first['_id']}.txt"
        total_s = sum((p.get("duration_ms") or 0) for p in parts) / 1000

        async def progress(pct: float) -> None:
            presented = present_file({**first, "status": "processing"})
            await self._event("processing_progress", file=presented, progress_pct=pct)

        error = await self._concat(paths, listing, joined, total_s=total_s, on_progress=progress,
                                   inpoints=overlaps_s(parts))  # fmt: skip
        if error is not None:
            self._log.warning("session_join_failed", session=session, error=error)
            now = utcnow()
            await files.update_many(
                {"_id": {"$in": ids}},
                {"$set": {"status": "ready", "ready_at": now, "modified": now,
                          "integrity": {"parts": len(parts), "join_failed": error},
                          **upload_queued(self.config.storage_id, now)}},
            )  # fmt: skip
            await self._event("processing_failed", reason=error,
                              file=present_file({**first, "status": "ready"}))  # fmt: skip
            return
        facts = await probe_file(joined)
        for path in paths:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
        await asyncio.to_thread(joined.rename, final)
        await self._session_ready(session, parts, final, facts)

    async def _session_ready(
        self, session: int, parts: list[dict[str, Any]], final: Path, facts: FileFacts
    ) -> None:
        """The first part's record becomes the session's ``ready`` file; the others go."""
        files = self._db[Collections.FILES]
        size = facts.size_bytes
        if final.suffix == ".m3u8":
            size, _ = await self._facts(final)
        now = utcnow()
        record = await files.find_one_and_update(
            {"_id": parts[0]["_id"]},
            {"$set": {"status": "ready", "size_bytes": size, "duration_ms": facts.duration_ms,
                      "ready_at": now, "modified": now,
                      "integrity": integrity_report(parts, facts),
                      **upload_queued(self.config.storage_id, now)}},
            return_document=True,
        )  # fmt: skip
        await files.delete_many({"_id": {"$in": [p["_id"] for p in parts[1:]]}})
        self._log.info("session_joined", session=session, parts=len(parts), file=final.name,
                       duration_ms=facts.duration_ms)  # fmt: skip
        if record is not None:
            await self._event("processing_complete", file=present_file(record))
            await self._event("file_ready", file=present_file(record))

    async def _concat(
        self,
        paths: list[Path],
        listing: Path,
        out: Path,
        *,
        total_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        inpoints: list[float] | None = None,
    ) -> str | None:
        """Copy ``paths`` one after the other into ``out``, each from its ``inpoints`` second
        (the overlap with the one before; copied from the keyframe before it); None, or FFmpeg's
        error."""

        def quoted(path: Path) -> str:
            return "file '" + str(path).replace("'", "'\\''") + "'"

        lines = []
        for index, path in enumerate(paths):
            lines.append(quoted(path))
            if inpoints and index < len(inpoints) and inpoints[index] > 0:
                lines.append(f"inpoint {inpoints[index]:.3f}")
        await asyncio.to_thread(listing.write_text, "\n".join(lines) + "\n")
        try:
            return await ffmpeg_copy(
                self._settings.ffmpeg_path,
                ["-f", "concat", "-safe", "0", "-i", str(listing)],
                out,
                faststart=self._ext == "mp4",
                total_s=total_s,
                on_progress=on_progress,
            )
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(listing.unlink)

    # -- split mode ---------------------------------------------------------------------------

    async def _watch_segments(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._drain_segment_list()
                await self._announce_open_segments()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("segment_watch_failed", error=str(exc))

    def _read_list(self) -> list[str]:
        if self._segment_list is None or not self._segment_list.exists():
            return []
        with self._segment_list.open("rb") as fh:
            fh.seek(self._list_offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._list_offset += len(complete)
        return [line for line in complete.decode(errors="replace").splitlines() if line]

    async def _drain_segment_list(self) -> None:
        for line in await asyncio.to_thread(self._read_list):
            fields = [f.strip().strip('"') for f in line.split(",")]
            name = os.path.basename(fields[0])
            try:
                start = float(fields[1])
            except (IndexError, ValueError):
                start = 0.0
            first = self._list_base is None
            if self._list_base is None:
                self._list_base = start
            when = self._part_started + timedelta(seconds=start - self._list_base)
            if self._aligned and not first:
                when = self._on_boundary(when)
            await self._adopt_segment(self._dir / name, when)

    def _on_boundary(self, when: datetime) -> datetime:
        """An aligned cut's start, named after the clock boundary it was cut at (the media
        time estimate is off by FFmpeg's probe time; the cut is at the first keyframe after)."""
        period = self.config.recording_mode_settings.total_seconds
        epoch = when.timestamp()
        boundary = round(epoch / period) * period
        if abs(epoch - boundary) <= min(period / 2, 5.0):
            return datetime.fromtimestamp(boundary, UTC)
        return when

    async def _adopt_segment(self, path: Path, when: datetime) -> None:
        """Give a complete numbered segment its final name and register it."""
        if not path.name.startswith(".seg-"):
            return
        final = await asyncio.to_thread(self._free_name, when)
        # Counted as done before the rename, so the written total never dips in between.
        size = await asyncio.to_thread(_size_of, path)
        ours = self._seg_prefix is not None and path.name.startswith(self._seg_prefix)
        self._part_bytes += size if ours else 0
        self._opened.discard(path.name)
        try:
            await asyncio.to_thread(path.rename, final)
        except FileNotFoundError:
            self._part_bytes -= size if ours else 0
            return
        await self._close_part(final, None, started=when)

    def _written_bytes(self) -> int | None:
        """The supervisor's ``size_source``: what the current process has written, where its
        muxer reports no size (segment and HLS muxers): its completed segments and the open one.
        None for a single file (FFmpeg's own ``total_size``)."""
        if self._hls_written is not None:
            # HLS: segments appear numbered in order, each whole once complete (with temp_file
            # the muxer shows nothing of the open one), so the count lags by up to a segment;
            # N/A until the first one is there.
            pattern, n, done = self._hls_written
            while (size := _existing_size(Path(pattern % n))) is not None:
                done, n = done + size, n + 1
            self._hls_written = (pattern, n, done)
            return done if n > self._hls_from else None
        if self._seg_prefix is None:
            return None
        prefix = self._seg_prefix
        open_now = [name for name in self._opened if name.startswith(prefix)]
        return self._part_bytes + sum(_size_of(self._dir / name) for name in open_now)

    def _free_name(self, when: datetime) -> Path:
        candidate = self._dir / file_name(self._slug, when, self._ext)
        n = 2
        while candidate.exists():
            candidate = self._dir / f"{candidate.stem.rsplit('~', 1)[0]}~{n}.{self._ext}"
            n += 1
        return candidate

    def _stray_segments(self) -> list[Path]:
        if not self._dir.is_dir():
            return []
        return sorted(self._dir.glob(f".seg-*.{self._ext}"))

    async def _announce_open_segments(self) -> None:
        for path in await asyncio.to_thread(self._stray_segments):
            if path.name not in self._opened:
                self._opened.add(path.name)
                await self._event(
                    "file_opened", file={"file_name": path.name, "file_path": str(path)}
                )


def _size_of(path: Path) -> int:
    return _existing_size(path) or 0


def _existing_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
