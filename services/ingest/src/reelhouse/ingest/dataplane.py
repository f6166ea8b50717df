"""The data plane (``reelhouse-ingest``, Go) as a supervised child (docs/INGEST.md "Process and
pipes").

States: ``starting`` (spawned, no ``ready`` yet) → ``running`` → on an exit we did not ask for,
``retrying`` (capped exponential backoff with jitter, :func:`reelhouse.common.ffmpeg.supervisor.
backoff_delay`, reset after a stable run) → ``starting`` …; ``stop()`` closes stdin (the data
plane exits 0, closing every connection), then SIGTERM, then SIGKILL. Like FFmpeg, the child
dies with the service (``PR_SET_PDEATHSIG``).

Commands go to stdin, one JSON object per line; events come from stdout, one per line, and are
handed to ``on_event`` in order; stderr lines (JSON logs) are re-logged at their level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from reelhouse.common.ffmpeg.supervisor import (
    SupervisorConfig,
    backoff_delay,
    die_with_parent_preexec,
)
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.ingest.dataplane")

EventHook = Callable[[dict[str, Any]], Awaitable[None]]
"""Awaited with every event the data plane writes (``ev`` names it)."""
ExitHook = Callable[[int, list[str]], Awaitable[None]]
"""Awaited after every exit we did not ask for, with the code and the stderr tail."""

_LINE_LIMIT = 4 * 1024 * 1024  # a stats line with hundreds of connections
_STOP_GRACE_S = 5.0


class DataPlane:
    """Runs ``argv`` until :meth:`stop`, restarting it after a crash."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        on_event: EventHook,
        on_exit: ExitHook | None = None,
        backoff: SupervisorConfig,
        stable_after_s: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self._on_event = on_event
        self._on_exit = on_exit
        self._backoff = backoff
        self._stable_after_s = stable_after_s  # seconds a run must last to reset the backoff
        self.state = "stopped"
        self.crashes = 0  # exits we did not ask for, over the service's life
        self.ready = asyncio.Event()  # the current process has said `ready`
        self.fanout = ""  # `host:port` the current process's fan-out listener bound
        self.version = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._rng = random.Random()  # noqa: S311 (backoff jitter, not a secret)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dataplane")

    async def send(self, command: dict[str, Any]) -> bool:
        """Write one command line; False when no process is there to take it."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        line = json.dumps(command, separators=(",", ":")).encode() + b"\n"
        async with self._write_lock:
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                return False
        return True

    async def stop(self) -> None:
        """Close stdin (a clean exit), SIGTERM, SIGKILL; then stop supervising."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()
            if not await _exited_within(proc, _STOP_GRACE_S):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                if not await _exited_within(proc, _STOP_GRACE_S):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                break
            self.crashes += 1
            tail = list(self._stderr_tail)
            if time.monotonic() - started >= self._stable_after_s:
                failures = 0
            failures += 1
            delay = backoff_delay(failures, self._backoff, self._rng.random())
            self.state = "retrying"
            log.error(
                "dataplane_crashed",
                code=code,
                restarts=self.crashes,
                retry_in_s=round(delay, 2),
                stderr=tail[-3:],
            )
            if self._on_exit is not None:
                try:
                    await self._on_exit(code, tail)
                except Exception:
                    log.exception("dataplane_exit_hook_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self) -> int:
        self.ready.clear()
        self.fanout = ""
        self._stderr_tail.clear()
        self.state = "starting"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
                preexec_fn=die_with_parent_preexec(),  # prctl only
            )
        except OSError as exc:
            self._stderr_tail.append(f"cannot start {self.argv[0]}: {exc}")
            return -1
        self._proc = proc
        log.info("dataplane_started", pid=proc.pid)
        assert proc.stdout is not None
        assert proc.stderr is not None
        readers = [
            asyncio.create_task(self._read_events(proc.stdout)),
            asyncio.create_task(self._read_stderr(proc.stderr)),
        ]
        code = await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 2.0)
        for task in readers:
            task.cancel()
        self.ready.clear()
        log.info("dataplane_exited", pid=proc.pid, code=code)
        return code

    async def _read_events(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line past the limit: skip it, keep reading
                log.warning("dataplane_line_too_long")
                continue
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("dataplane_bad_line", line=line[:200].decode(errors="replace"))
                continue
            if not isinstance(event, dict) or "ev" not in event:
                continue
            if event["ev"] == "ready":
                self.fanout = str(event.get("fanout", ""))
                self.version = str(event.get("version", ""))
                self.state = "running"
                self.ready.set()
                log.info("dataplane_ready", fanout=self.fanout, version=self.version)
            try:
                await self._on_event(event)
            except Exception:
                log.exception("dataplane_event_failed", ev=event.get("ev"))

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                continue
            if not raw:
                return
            text = raw.decode(errors="replace").strip()
            if not text:
                continue
            self._stderr_tail.append(text)
            level, msg, fields = "info", text, {}
            with contextlib.suppress(ValueError, AttributeError):
                data = json.loads(text)
                level = str(data.pop("level", "info")).lower()
                msg = str(data.pop("msg", "dataplane_log"))
                data.pop("time", None)
                fields = {k: v for k, v in data.items() if k not in ("event", "logger")}
            method = {"debug": log.debug, "warn": log.warning, "warning": log.warning,
                      "error": log.error}.get(level, log.info)  # fmt: skip
            method("dataplane_log", dp_msg=msg, **fields)


async def _exited_within(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True
