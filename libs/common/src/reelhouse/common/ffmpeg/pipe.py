"""A short-lived FFmpeg whose output is read from its stdout while it is written (playback).

Not for jobs: those run under :mod:`reelhouse.common.ffmpeg.supervisor`. This is one FFmpeg per
HTTP answer that ends with it: stdin closed, output on ``pipe:1``, the last stderr lines kept
for the log. The process dies with its parent (Linux, the supervisor's ``preexec_fn``) and is
killed and reaped by :meth:`PipedFFmpeg.close`, which the reader calls when it is done or its
client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Sequence

from reelhouse.common.ffmpeg.supervisor import die_with_parent_preexec

CHUNK_BYTES = 64 * 1024
"""Bytes read from FFmpeg's stdout at a time."""


class PipedFFmpeg:
    """``ffmpeg <args>`` with its output on stdout; ``args`` must end with ``pipe:1``."""

    def __init__(self, ffmpeg_path: str, args: Sequence[str], *, stderr_lines: int = 20) -> None:
        if isinstance(args, str | bytes):
            raise TypeError("FFmpeg arguments must be a list of strings, never a shell string")
        checked = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args]
        if any(not isinstance(a, str) or "\0" in a for a in checked):
            raise ValueError("FFmpeg arguments must be strings without NUL characters")
        if not checked or checked[-1] != "pipe:1":
            raise ValueError("a piped FFmpeg writes its output to pipe:1")
        self.argv = [ffmpeg_path, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
                     *checked]  # fmt: skip
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent_preexec(),
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(), name="ffmpeg-stderr")

    async def _read_stderr(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr_tail.append(line)

    async def read(self) -> bytes:
        """The next bytes of output; ``b""`` once FFmpeg has closed it."""
        assert self._proc is not None
        assert self._proc.stdout is not None
        return await self._proc.stdout.read(CHUNK_BYTES)

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def wait(self) -> int:
        """FFmpeg's exit status once its output has ended (stderr read to its end)."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await self._stderr_task
        return code

    async def close(self) -> None:
        """Kill FFmpeg if it still runs, and reap it (safe to call more than once)."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        await asyncio.shield(self._proc.wait())
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stderr_task
