"""ffprobe with a deadline, for files Reelhouse wrote itself (size and duration of a record)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileFacts", "probe_file", "run_ffprobe"]


@dataclass(frozen=True)
class FileFacts:
    """What a recorded file holds, read from the file itself."""

    size_bytes: int
    duration_ms: int | None
    """None when ffprobe cannot read a duration (empty or unreadable file)."""
    streams: list[str]
    """Codec types in order, e.g. ``["video", "audio"]``."""


async def run_ffprobe(
    args: list[str], *, timeout_s: float = 15.0, ffprobe_path: str = "ffprobe"
) -> dict[str, Any] | None:
    """``ffprobe -v error -of json <args>`` parsed, or None on error or timeout."""
    proc = await asyncio.create_subprocess_exec(
        ffprobe_path, "-v", "error", "-of", "json", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(out or b"{}")
    except ValueError:
        return None


async def probe_file(path: Path, *, timeout_s: float = 15.0) -> FileFacts:
    """Size from the file system; duration and streams from ffprobe (local file, our own)."""
    try:
        size = os.stat(path).st_size  # one stat: not worth a thread
    except OSError:
        return FileFacts(size_bytes=0, duration_ms=None, streams=[])
    if size == 0:
        return FileFacts(size_bytes=0, duration_ms=None, streams=[])
    info = await run_ffprobe(
        ["-show_entries", "format=duration:stream=codec_type", str(path)], timeout_s=timeout_s
    )
    if info is None:
        return FileFacts(size_bytes=size, duration_ms=None, streams=[])
    duration: int | None = None
    with contextlib.suppress(KeyError, TypeError, ValueError):
        duration = round(float(info["format"]["duration"]) * 1000)
    streams = [str(s.get("codec_type")) for s in info.get("streams", [])]
    return FileFacts(size_bytes=size, duration_ms=duration, streams=streams)
