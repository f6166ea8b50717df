"""ffprobe with a deadline: for files Reelhouse wrote itself (size and duration of a record) and
for live URLs a user names (the prober's ``getStreamInfo`` and stream monitoring).

A live URL is probed with the same protocol whitelist as an FFmpeg input of its type
(:data:`~reelhouse.common.ffmpeg.capabilities.PROTOCOL_WHITELIST`), so it can never make ffprobe
read a local file; its scheme must already have been checked (``contracts.streams.ProbeUrl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from reelhouse.common.contracts.streams import PROBE_INPUT_TYPES
from reelhouse.common.contracts.types import InputType, url_scheme
from reelhouse.common.ffmpeg.capabilities import (
    ANALYZE_DURATION_US,
    PROBE_SIZE_BYTES,
    PROTOCOL_WHITELIST,
)
from reelhouse.common.ffmpeg.supervisor import _die_with_parent_preexec

__all__ = [
    "FfprobeOutcome",
    "FileFacts",
    "live_probe_args",
    "probe_file",
    "run_ffprobe",
    "run_ffprobe_outcome",
]


@dataclass(frozen=True)
class FileFacts:
    """What a recorded file holds, read from the file itself."""

    size_bytes: int
    duration_ms: int | None
    """None when ffprobe cannot read a duration (empty or unreadable file)."""
    streams: list[str]
    """Codec types in order, e.g. ``["video", "audio"]``."""


@dataclass(frozen=True)
class FfprobeOutcome:
    """How one ffprobe run ended."""

    data: dict[str, Any] | None
    """ffprobe's JSON when it exited 0 and printed valid JSON; None otherwise."""
    timed_out: bool = False
    """Killed at the deadline."""
    returncode: int | None = None
    error: str = ""
    """ffprobe's last stderr line (``-v error``), e.g. ``srt://...: Input/output error``."""
    stderr: tuple[str, ...] = ()
    """Every non-blank stderr line (for classifying a failure; never shown to API callers)."""


_LIVE_PROBE_OPTIONS: Final[dict[InputType, tuple[str, ...]]] = {
    "INPUT_TYPE_RTSP_URL": ("-rtsp_transport", "tcp"),
    "INPUT_TYPE_RTP_URL": ("-f", "rtp"),
}


def live_probe_args(url: str) -> list[str]:
    """ffprobe arguments for a live URL: streams and format, the input type's whitelist.

    Probing is bounded like an FFmpeg input (``-analyzeduration``), so a live H.264 source
    answers in about 2.5 s instead of 5. Raises ``ValueError`` for a scheme no input type takes.
    """
    scheme = url_scheme(url)
    input_type = PROBE_INPUT_TYPES.get(scheme)
    if input_type is None:
        raise ValueError(f"{scheme or 'this'}: URLs are never probed")
    return [
        "-show_streams", "-show_format",
        "-protocol_whitelist", ",".join(PROTOCOL_WHITELIST[input_type]),
        "-analyzeduration", str(ANALYZE_DURATION_US),
        "-probesize", str(PROBE_SIZE_BYTES),
        *_LIVE_PROBE_OPTIONS.get(input_type, ()),
        "-i", url,
    ]  # fmt: skip


async def run_ffprobe_outcome(
    args: list[str],
    *,
    timeout_s: float = 15.0,
    ffprobe_path: str = "ffprobe",
    on_start: Callable[[int], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> FfprobeOutcome:
    """``ffprobe -v error -of json <args>`` with a deadline; the process is always reaped.

    At the deadline, or when the calling task is cancelled, ffprobe is killed. ``on_start`` is
    called with the pid once the process exists. ffprobe dies with its parent (Linux). ``env``
    is merged over this process's environment (the filtering proxy's ``http_proxy``).
    """
    proc = await asyncio.create_subprocess_exec(
        ffprobe_path, "-v", "error", "-of", "json", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent_preexec(),
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    if on_start is not None:
        on_start(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.CancelledError):
            raise
        return FfprobeOutcome(data=None, timed_out=True, returncode=proc.returncode)
    lines = [line.strip() for line in (err or b"").decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    error = lines[-1] if lines else ""
    if proc.returncode != 0:
        return FfprobeOutcome(
            data=None, returncode=proc.returncode, error=error, stderr=tuple(lines[-50:])
        )
    try:
        data = json.loads(out or b"{}")
    except ValueError:
        return FfprobeOutcome(data=None, returncode=0, error="ffprobe printed invalid JSON")
    return FfprobeOutcome(data=data, returncode=0, error=error)


async def run_ffprobe(
    args: list[str], *, timeout_s: float = 15.0, ffprobe_path: str = "ffprobe"
) -> dict[str, Any] | None:
    """``ffprobe -v error -of json <args>`` parsed, or None on error or timeout."""
    outcome = await run_ffprobe_outcome(args, timeout_s=timeout_s, ffprobe_path=ffprobe_path)
    return outcome.data


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
