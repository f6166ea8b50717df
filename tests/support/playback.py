"""Recorded segments without a live recording: MPEG-TS segments cut by FFmpeg from a lavfi
source, registered as a split recording's file records (what the recorder writes for
``RECORDING_MODE_SPLIT_BY_TIME`` with ``align_to_clock``), for the playback browser test and
``bench/playback.py``."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from reelhouse.common.files import file_name
from reelhouse.common.mongo import Collections

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


async def cut_segments(
    folder: Path, *, count: int, seconds: int, size: str = "640x360"
) -> list[Path]:
    """``count`` MPEG-TS segments of ``seconds`` each (25 fps, a keyframe every second, AAC),
    timestamps running on from one to the next, as the recorder's aligned split writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        FFMPEG, "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-t", str(count * seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-keyint_min", "25",
        "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
        "-f", "segment", "-segment_time", str(seconds), "-segment_format", "mpegts",
        "-reset_timestamps", "0", str(folder / ".seg-%05d.ts"),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {err.decode(errors='replace')[-500:]}")
    return sorted(folder.glob(".seg-*.ts"))[:count]


async def register_segments(
    db: Any,
    *,
    job_id: str,
    folder: Path,
    segments: list[Path],
    seconds: int,
    start: datetime,
    gap_after: int | None = None,
    gap_s: float = 0.0,
    tenant: str = "default",
) -> list[dict[str, Any]]:
    """Copy ``segments`` into the job's folder under recorder-style names and insert their file
    records: segment ``i`` began ``start + i * seconds`` (plus ``gap_s`` after the ``gap_after``-th:
    a source drop, the next FFmpeg run's part)."""
    records = []
    for index, segment in enumerate(segments):
        began = start + timedelta(seconds=index * seconds)
        part = 1
        if gap_after is not None and index >= gap_after:
            began += timedelta(seconds=gap_s)
            part = 2
        ended = began + timedelta(seconds=seconds)
        target = folder / file_name("playback", began, "ts")
        await asyncio.to_thread(shutil.copyfile, segment, target)
        size = target.stat().st_size
        records.append({
            "_id": ObjectId(), "tenant": tenant, "file_name": target.name,
            "file_path": str(target), "module_name": "MODULE_RECORDINGS",
            "file_visibility": "FILE_VISIBILITY_PUBLIC", "output_format": "mpegts",
            "entity_name": "playback", "entity_id": job_id, "size_bytes": size,
            "duration_ms": seconds * 1000, "status": "ready", "node": "recorder-1",
            "part": part, "created": began, "modified": ended, "closed_at": ended,
            "ready_at": ended,
            "integrity": {"parts": 1, "overlaps": [], "duration_ms": seconds * 1000,
                          "expected_ms": seconds * 1000, "gaps": [],
                          "periods": [{"from": began, "to": ended,
                                       "duration_ms": seconds * 1000}],
                          "streams": ["video", "audio"], "checked_at": ended},
        })  # fmt: skip
    await db[Collections.FILES].insert_many(records)
    return records
