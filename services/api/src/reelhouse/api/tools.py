"""Versions of the external tools the engine runs (FFmpeg, ffprobe)."""

from __future__ import annotations

import asyncio
import shutil


async def tool_version(binary: str, timeout: float = 5.0) -> str | None:
    """First line of ``<binary> -version`` (e.g. ``ffmpeg version 5.1.6-0+deb12u1``), or None."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "-hide_banner",
            "-version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError):
        return None
    if proc.returncode != 0 or not out:
        return None
    first = out.decode(errors="replace").splitlines()[0]
    parts = first.split()
    return parts[2] if len(parts) >= 3 and parts[1] == "version" else first
