"""The external tools the engine runs (FFmpeg, ffprobe): running them, and their versions."""

from __future__ import annotations

import asyncio
import shutil


async def run_tool(binary: str, *args: str, timeout: float = 10.0) -> str | None:
    """Standard output of ``<binary> -hide_banner <args>``; None if it is missing, fails or
    takes longer than ``timeout`` seconds."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "-hide_banner",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError):
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def tool_version(binary: str, timeout: float = 5.0) -> str | None:
    """First line of ``<binary> -version`` (e.g. ``ffmpeg version 5.1.6-0+deb12u1``), or None."""
    out = await run_tool(binary, "-version", timeout=timeout)
    if not out:
        return None
    first = out.splitlines()[0]
    parts = first.split()
    return parts[2] if len(parts) >= 3 and parts[1] == "version" else first
