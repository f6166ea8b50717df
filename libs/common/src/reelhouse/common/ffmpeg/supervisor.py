"""One supervisor for every long-running FFmpeg (recorder, restreamer, prober monitors).

An explicit state machine (docs/ARCHITECTURE.md §4)::

    starting ──first progress block──▶ running
        │                                  │
        └────── exit, or no progress ──────┴──▶ retrying ──backoff──▶ starting
                                                (failed once max_restarts is exceeded)
    any state ──stop()──▶ stopping ──▶ finished | killed | failed

The picture as data is :data:`TRANSITIONS` (each state and the states it may move to); a move
the table does not hold raises :class:`IllegalTransition` -- a bug in the supervisor, never a
condition of the media.

- ``starting``: a process is being (re)started; no progress block has arrived yet.
- ``running``: FFmpeg has reported progress at least once.
- ``retrying``: the process ended without being asked to (or hung and was stopped); the next
  start waits for a capped exponential backoff with jitter (:func:`backoff_delay`). Until a run
  has reported progress once (:attr:`FFmpegSupervisor.ever_ran`), retrying means *waiting* for
  a source that is not live yet: logged at info, and shown as ``waiting`` by job runs.
- ``stopping``: :meth:`FFmpegSupervisor.stop` was called; FFmpeg is asked to quit.
- ``finished``: stopped on request, and FFmpeg exited with 0 (``q``) or 255 (SIGINT), died of our
  SIGINT (stopped before it had set up its handlers), or nothing was running; also an
  unrequested exit 0 when ``finish_on_success`` is set (but not the exit 0 of a process the
  watchdog stopped for lack of progress: that one is retried).
- ``killed``: stopped on request, but FFmpeg ignored ``q`` and SIGINT and needed SIGKILL.
- ``failed``: more than ``max_restarts`` consecutive failures, or an error exit while stopping.

Process handling:

- The argument list comes from a factory called before every (re)start, so a recorder can open a
  new output part each time. It is a list, never a shell string. :func:`build_argv` puts the
  binary first and adds ``-progress pipe:1 -nostats`` right after it as global options (global
  options must precede the outputs; directly after the binary is always valid).
- FFmpeg runs with stdin, stdout and stderr as pipes. stdout carries progress, parsed line by line
  (:class:`~reelhouse.common.ffmpeg.progress.ProgressParser`); the last ``stderr_tail_lines``
  stderr lines are kept for :attr:`FFmpegSupervisor.last_error`.
- A byte tap (:meth:`FFmpegSupervisor.open_tap`, for the argv factory): an extra output
  ``pipe:<fd>`` whose bytes the supervisor counts and drops. FFmpeg measures ``total_size`` and
  ``bitrate`` on its first output file only, and the ``tee`` muxer has no I/O of its own; a tee
  slave on the tap gives the count that stands in (see ``open_tap``).
- Graceful stop: ``q`` on stdin (FFmpeg exits 0 after writing its trailer), SIGINT after
  ``sigint_after_s`` (FFmpeg exits 255, also after writing its trailer), SIGKILL at
  ``graceful_stop_timeout_s`` after the ``q``. Every process is reaped (``await proc.wait()``),
  also when the supervising task is cancelled.
- FFmpeg's environment is the worker's (``os.environ``) with the constructor's ``env`` merged
  over it (the recorder passes ``TZ=UTC`` so that strftime file names are in UTC).
- ``start_new_session=False``: FFmpeg stays in the worker's process group and session, so a signal
  to the group (Ctrl-C in a terminal, a container or systemd unit being stopped) reaches FFmpeg
  too and nothing outlives the worker's unit.
- FFmpeg dies with its worker: on Linux the child sets ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
  (in ``preexec_fn``) before it execs FFmpeg, so a worker killed *alone* with SIGKILL (OOM
  killer, ``kill -9``) does not leave an orphan that writes files forever (FFmpeg ignores the
  broken progress pipe and would never notice). A worker that dies between the fork and the
  ``prctl`` is caught by comparing the parent pid afterwards. On other systems nothing is set,
  and the job lease protocol bounds an orphan's life. The file ends as after any hard kill,
  which the crash-safe formats survive (docs/ARCHITECTURE.md §4) and the next owner finalises.

  Why SIGKILL and not SIGTERM (which would let FFmpeg write its trailer): the signal fires
  when the *thread* that forked FFmpeg ends, and the kernel sends it *again* each time FFmpeg
  passes from a dying thread to another live thread of the worker, as the threads of a
  SIGKILLed worker die one by one. FFmpeg counts SIGTERMs and after the fourth calls ``exit``
  from its signal handler, which can deadlock: the failover benchmark left 12 FFmpeg of a
  SIGKILLed recorder alive, every thread waiting on a lock, for good. SIGKILL cannot hang.
  (``asyncio.create_subprocess_exec`` forks from the event loop's thread, which lives as long
  as the supervisor can run, so the signal comes when the worker dies, not before.)
- The argument list is never logged: it may carry stream keys and passphrases.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import os
import random
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Protocol, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reelhouse.common.ffmpeg.progress import NOT_AVAILABLE, ProgressParser, ProgressSnapshot
from reelhouse.common.logging import get_logger

__all__ = [
    "TRANSITIONS",
    "ArgvFactory",
    "ExitHook",
    "FFmpegSupervisor",
    "IllegalTransition",
    "ProgressHook",
    "StateHook",
    "SupervisorConfig",
    "SupervisorState",
    "backoff_delay",
    "build_argv",
    "die_with_parent_preexec",
]

# StreamReader buffer limit (bytes): FFmpeg's stderr lines can be long (codec parameter dumps).
_LINE_LIMIT = 1024 * 1024
# Seconds to let the pipe readers drain after the process has exited.
_READER_DRAIN_S = 2.0
_FEED_CHUNK = 64 * 1024


class Feed(Protocol):
    """A blocking byte source FFmpeg reads through a pipe (:meth:`FFmpegSupervisor.open_feed`):
    streamlink's opened stream, for instance. ``close()`` may be called from another thread
    to end a blocked ``read()``."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def _close_aside(source: Feed) -> None:
    """Close ``source`` in a thread of its own: closing may wait for the source's threads (a
    download under way), which may in turn wait for this event loop (the filtering proxy)."""

    def close() -> None:
        with contextlib.suppress(Exception):
            source.close()

    threading.Thread(target=close, name="ffmpeg-feed-close", daemon=True).start()


# Return codes after our own stop: 0 after 'q', 255 after SIGINT, and death by our SIGINT (an
# FFmpeg stopped in its first moments, before it has installed its signal handlers).
_CLEAN_STOP_CODES = frozenset({0, 255, -signal.SIGINT})
# linux/prctl.h: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


class SupervisorState(StrEnum):
    """Where a supervised FFmpeg is in its life; the value is what ``runtime.state`` stores."""

    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def terminal(self) -> bool:
        """True for the states a supervisor never leaves."""
        return self in _TERMINAL


_S = SupervisorState
TRANSITIONS: Final[Mapping[SupervisorState, frozenset[SupervisorState]]] = {
    # STARTING -> STARTING is the first start ("not started" -> "start requested"); FINISHED
    # is a stop() before start() or, with finish_on_success, an exit 0; FAILED gives up.
    _S.STARTING: frozenset(
        {_S.STARTING, _S.RUNNING, _S.RETRYING, _S.STOPPING, _S.FINISHED, _S.FAILED}
    ),
    _S.RUNNING: frozenset({_S.RETRYING, _S.STOPPING, _S.FINISHED, _S.FAILED}),
    _S.RETRYING: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.FINISHED, _S.KILLED, _S.FAILED}),
    _S.FINISHED: frozenset(),
    _S.FAILED: frozenset(),
    _S.KILLED: frozenset(),
}
"""Every state and the states it may move to. The one move outside it: a supervising task that
is cancelled ends ``killed`` from wherever it was (its process killed and reaped, no hooks)."""

_TERMINAL = frozenset(state for state, after in TRANSITIONS.items() if not after)
_FAILING = frozenset({SupervisorState.RETRYING, SupervisorState.FAILED, SupervisorState.KILLED})


class IllegalTransition(RuntimeError):
    """A state change :data:`TRANSITIONS` does not allow (the state stays as it was)."""

    def __init__(self, before: SupervisorState, after: SupervisorState) -> None:
        super().__init__(f"ffmpeg supervisor: no transition from {before} to {after}")
        self.before = before
        self.after = after


class SupervisorConfig(BaseModel):
    """How an FFmpeg process is watched, restarted and stopped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Path to the ffmpeg binary, or a name looked up on PATH (tests point it at a fake).
    ffmpeg_path: str = "ffmpeg"
    # Seconds without progress (no progress block that moves frame, size or output time) before
    # the process counts as hung and is stopped and restarted. Also bounds the time from start to
    # the first block. None disables the watchdog (e.g. an SRT listener waiting for its caller).
    stale_timeout_s: float | None = Field(default=10.0, gt=0)
    # Seconds before the first restart after a failure.
    backoff_initial_s: float = Field(default=1.0, gt=0)
    # Seconds: the delay between restarts never exceeds this.
    backoff_max_s: float = Field(default=30.0, gt=0)
    # Factor (dimensionless, >= 1) the delay grows by with each consecutive failure.
    backoff_multiplier: float = Field(default=2.0, ge=1)
    # Fraction (0..1) of each delay that is randomized away: delay = base * (1 - jitter * U[0, 1)).
    # 0 = no jitter, 0.5 = "equal jitter", 1 = "full jitter". It keeps many jobs that failed
    # together (a shared source went down) from restarting in lockstep.
    jitter: float = Field(default=0.5, ge=0, le=1)
    # Count of consecutive restarts (no stable run in between) before giving up as failed;
    # None = restart forever.
    max_restarts: int | None = Field(default=None, ge=0)
    # Seconds a run must last after its first progress block to count as stable: the next
    # failure then starts again from backoff_initial_s and a fresh max_restarts budget.
    stable_after_s: float = Field(default=30.0, ge=0)
    # Seconds after writing 'q' on stdin before SIGINT is sent as well.
    sigint_after_s: float = Field(default=2.0, ge=0)
    # Seconds from the 'q' until SIGKILL if FFmpeg is still alive.
    graceful_stop_timeout_s: float = Field(default=10.0, gt=0)
    # Lines: how much of FFmpeg's stderr is kept for last_error.
    stderr_tail_lines: int = Field(default=20, ge=1)
    # Seconds between FFmpeg's progress blocks (``-stats_period``); None keeps FFmpeg's 0.5 s.
    # Each block is parsed in Python, so many jobs per node want a longer period.
    progress_period_s: float | None = Field(default=None, gt=0)
    # Whether an exit with code 0 that we did not ask for ends supervision as finished (a
    # recording with a duration limit) instead of being restarted (a live source that ended).
    finish_on_success: bool = False

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


ArgvFactory = Callable[[], Sequence[str] | Awaitable[Sequence[str]]]
"""Returns FFmpeg's arguments (without the binary); called before every (re)start."""
StateHook = Callable[[SupervisorState, str], Awaitable[None]]
"""Awaited on every state change with the new state and a reason a person can read."""
ProgressHook = Callable[[ProgressSnapshot], Awaitable[None]]
"""Awaited with every completed progress block."""
ExitHook = Callable[[int, list[str]], Awaitable[None]]
"""Awaited after every process exit with its return code and stderr tail."""
StderrHook = Callable[[str], None]
"""Called with every non-blank stderr line as FFmpeg writes it."""


def build_argv(
    ffmpeg_path: str, args: Sequence[str], *, progress_period_s: float | None = None
) -> list[str]:
    """The full argv: binary, ``-progress pipe:1 -nostats`` (unless present), then ``args``.

    ``progress_period_s`` adds ``-stats_period`` (how often FFmpeg writes a progress block)
    unless ``args`` already set it.

    Raises ``TypeError`` for a string (arguments are a list, never a shell string) or an argument
    that is not a string (path-like ones are converted), and ``ValueError`` for an argument with a
    NUL character or ``-progress`` aimed anywhere but ``pipe:1``, where the supervisor reads it.
    """
    if isinstance(args, str | bytes):
        raise TypeError("FFmpeg arguments must be a list of strings, never a shell string")
    checked: list[str] = []
    for arg in args:
        if isinstance(arg, os.PathLike):
            arg = os.fspath(arg)
        if not isinstance(arg, str):
            raise TypeError(f"FFmpeg arguments must be strings, not {type(arg).__name__}")
        if "\0" in arg:
            raise ValueError("an FFmpeg argument contains a NUL character")
        checked.append(arg)
    args = checked
    extra: list[str] = []
    targets = [args[at + 1 : at + 2] for at, arg in enumerate(args) if arg == "-progress"]
    if any(target != ["pipe:1"] for target in targets):
        raise ValueError("-progress must be pipe:1: the supervisor reads progress on stdout")
    if not targets:
        extra += ["-progress", "pipe:1"]
    if "-nostats" not in args:
        extra.append("-nostats")
    if progress_period_s is not None and "-stats_period" not in args:
        extra += ["-stats_period", f"{progress_period_s:g}"]
    return [ffmpeg_path, *extra, *args]


def backoff_delay(failures: int, config: SupervisorConfig, rand: float) -> float:
    """Seconds to wait before the restart that follows ``failures`` consecutive failures (>= 1).

    ``base = min(backoff_max_s, backoff_initial_s * backoff_multiplier ** (failures - 1))`` and the
    delay is ``base * (1 - jitter * rand)`` with ``rand`` uniform in [0, 1): always within
    ``[base * (1 - jitter), base]``, so never above the cap.
    """
    try:
        base = config.backoff_initial_s * config.backoff_multiplier ** max(failures - 1, 0)
    except OverflowError:
        base = config.backoff_max_s
    base = min(base, config.backoff_max_s)
    return base * (1.0 - config.jitter * rand)


@functools.cache
def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once in the parent (never in a freshly forked child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies; None off Linux.

    It runs in the forked child before ``exec``, so it does as little as possible: one
    ``prctl`` and one ``getppid``. If the parent died before the ``prctl`` (the child was already
    adopted by init or a subreaper), the signal would never come, so the child sends it to itself.
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child die (SIGKILL) with this process (Linux; None
    elsewhere): for any long-running child, not only FFmpeg (the ingest data plane)."""
    return _die_with_parent_preexec()


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one process run ended."""

    reason: str
    returncode: int | None = None  # None: no process was started
    requested: bool = False  # ended because stop() was called
    killed: bool = False  # SIGKILL was needed
    hung: bool = False  # stopped by the watchdog: no progress for stale_timeout_s
    stable: bool = False  # ran with progress for at least stable_after_s


def _exit_reason(returncode: int, stderr_tail: Sequence[str]) -> str:
    if returncode < 0:
        try:
            what = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"killed by signal {-returncode}"
    else:
        what = f"exited with code {returncode}"
    return f"{what}: {stderr_tail[-1]}" if stderr_tail else what


async def _readline(stream: asyncio.StreamReader) -> str | None:
    """The next line without its ending, or None at end of stream."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            continue  # longer than _LINE_LIMIT: the reader has dropped it
        if not raw:
            return None
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")


class _ByteCounter(asyncio.Protocol):
    """The tap's reading end: counts what FFmpeg writes and drops it."""

    def __init__(self) -> None:
        self.count = 0
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.count += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _exited_within(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True


class FFmpegSupervisor:
    """Runs one FFmpeg command, restarts it when it fails or hangs, and stops it gracefully.

    Use ``start()`` then ``await stop()`` (or ``async with``); ``await wait()`` returns once the
    supervisor reaches a terminal state on its own. A supervisor runs once: it cannot be
    restarted after it has finished. Hooks are awaited in line, so keep them short; an exception
    in a hook is logged and does not disturb supervision.
    """

    def __init__(
        self,
        argv_factory: ArgvFactory,
        *,
        config: SupervisorConfig | None = None,
        on_state: StateHook | None = None,
        on_progress: ProgressHook | None = None,
        on_exit: ExitHook | None = None,
        on_stderr: StderrHook | None = None,
        env: Mapping[str, str] | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Prepare (not start) supervision.

        ``on_stderr`` is called (not awaited) with every non-blank stderr line as it arrives, for
        callers that react to FFmpeg's messages (a restream's destination failing).
        ``env`` holds extra environment variables for FFmpeg, merged over ``os.environ`` at each
        start (e.g. ``{"TZ": "UTC"}``); ``rng`` seeds the backoff jitter (tests).
        """
        self._argv_factory = argv_factory
        self._config = config or SupervisorConfig()
        self._env = dict(env) if env else None
        self._on_state = on_state
        self._on_progress = on_progress
        self._on_exit = on_exit
        self._on_stderr = on_stderr
        self._log = log or get_logger(__name__)
        # Jitter spreads restarts; it is not a security measure.
        self._rng = rng or random.Random()  # noqa: S311
        self._state = SupervisorState.STARTING
        self._reason = "not started"
        self._task: asyncio.Task[None] | None = None
        self._stop_event = asyncio.Event()
        self._stop_reason = "stop requested"
        self._pid: int | None = None
        self._restarts = 0
        self._started_at: datetime | None = None
        self._last_error: str | None = None
        self._last_progress: ProgressSnapshot | None = None
        self._stderr_tail: deque[str] = deque(maxlen=self._config.stderr_tail_lines)
        self._min_next_delay = 0.0  # set by delay_next_retry for the next restart only
        self._retry_now = False  # set by retry_now for the next restart only
        self._last_advance = 0.0  # loop time of the last progress block that moved
        self._running_since: float | None = None  # loop time of the current run's first block
        self._ever_ran = False  # some run has reported progress (the source was live once)
        self._tap_fds: tuple[int, int] | None = None  # (read, write) opened by open_tap
        self._tap: _ByteCounter | None = None  # the current (or latest) process's tap count
        self._tap_transport: asyncio.BaseTransport | None = None
        self._feed: tuple[int, int, Feed] | None = None  # (read, write, source) of open_feed
        self._feeding: Feed | None = None  # the source the current process reads
        self.feed_error: str | None = None
        """Why the latest feed ended early (the source failed), None if it did not."""
        self.size_source: Callable[[], int | None] | None = None
        """Bytes the current process has written so far, asked when a progress block has no
        ``total_size`` and no tap counts one (the segment muxer of a split recording keeps no
        size of its own): the block then gets it as ``total_size`` and a bitrate, as with a tap."""

    # -- what callers read ------------------------------------------------------------------

    @property
    def config(self) -> SupervisorConfig:
        """The configuration this supervisor runs with."""
        return self._config

    @property
    def state(self) -> SupervisorState:
        """The current state."""
        return self._state

    @property
    def reason(self) -> str:
        """Why the current state was entered, e.g. ``"exited with code 1: <stderr line>"``."""
        return self._reason

    @property
    def pid(self) -> int | None:
        """Process id of the running FFmpeg; None between processes."""
        return self._pid

    @property
    def restarts(self) -> int:
        """How many times FFmpeg has been restarted in total (never reset)."""
        return self._restarts

    @property
    def started_at(self) -> datetime | None:
        """When the latest FFmpeg process was started (UTC)."""
        return self._started_at

    @property
    def last_error(self) -> str | None:
        """The stderr tail (newline-joined) of the last run that failed, else its failure reason.

        None until a run fails; kept after later successful runs.
        """
        return self._last_error

    @property
    def last_progress(self) -> ProgressSnapshot | None:
        """The latest progress snapshot of any run; None before the first."""
        return self._last_progress

    @property
    def ever_ran(self) -> bool:
        """Whether any run has reported progress yet. Until then a job is *waiting* for its
        source (armed before it goes live): its retries are expected, not failures."""
        return self._ever_ran

    @property
    def tap_bytes(self) -> int | None:
        """Bytes the current (or latest) process wrote to its tap; None without a tap."""
        return None if self._tap is None else self._tap.count

    @property
    def stderr_tail(self) -> list[str]:
        """The last stderr lines of the current (or latest) process."""
        return list(self._stderr_tail)

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start supervising in a background task (needs a running event loop)."""
        if self._task is not None or self._state.terminal:
            raise RuntimeError("an FFmpegSupervisor runs once")
        self._task = asyncio.create_task(self._run(), name="ffmpeg-supervisor")

    def open_tap(self) -> str:
        """An output URL (``pipe:<fd>``) whose bytes the supervisor counts and drops.

        Call it from the argv factory: the tap belongs to the process started with the
        arguments the factory returns (the same URL if called twice). While that process runs,
        a progress block whose ``total_size`` is ``N/A`` (a ``tee`` muxer as first output has no
        size of its own) gets the tap's count as ``total_size`` and the bitrate computed from it
        (:meth:`ProgressSnapshot.with_total_size`), so the stale watchdog sees it move too.
        """
        if self._tap_fds is None:
            # Not inheritable: pass_fds hands FFmpeg the write end, and no other child gets it.
            # The pipe keeps its default 64 KiB: the buffer that matters is the tee slave's FIFO
            # queue, which drops the tap's packets (never a destination's) if this loop lags.
            self._tap_fds = os.pipe()
        return f"pipe:{self._tap_fds[1]}"

    def open_feed(self, source: Feed) -> str:
        """An input URL (``pipe:<fd>``) that the supervisor fills with ``source``'s bytes.

        Call it from the argv factory: the feed belongs to the process started with the
        arguments the factory returns. Once FFmpeg runs, a thread copies ``source`` into the
        pipe until the source ends (FFmpeg then sees the end of its input) or FFmpeg exits (the
        source is closed). FFmpeg's stdin stays free for the ``q`` of a graceful stop.
        """
        if self._feed is not None:
            return f"pipe:{self._feed[0]}"
        read_fd, write_fd = os.pipe()  # not inheritable: pass_fds hands FFmpeg the read end
        self._feed = (read_fd, write_fd, source)
        return f"pipe:{read_fd}"

    def _close_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is None:
            return
        for fd in feed[:2]:
            with contextlib.suppress(OSError):
                os.close(fd)
        _close_aside(feed[2])

    def _feed_writer(self) -> asyncio.Task[None] | None:
        """Once FFmpeg has started: the task that copies the feed into its pipe."""
        feed, self._feed = self._feed, None
        if feed is None:
            return None
        read_fd, write_fd, source = feed
        os.close(read_fd)  # FFmpeg holds the only read end: its exit breaks the pipe
        self._feeding = source
        self.feed_error = None
        return asyncio.create_task(self._pump(write_fd, source))

    async def _pump(self, write_fd: int, source: Feed) -> None:
        def copy() -> None:
            try:
                while chunk := source.read(_FEED_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(write_fd, view) :]
            except BrokenPipeError:
                pass  # FFmpeg has exited
            except Exception as exc:  # the source failed (an expired URL, the network)
                if self._feeding is source:
                    self.feed_error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                with contextlib.suppress(Exception):
                    source.close()
                os.close(write_fd)  # FFmpeg sees the end of its input

        await asyncio.to_thread(copy)
        if self.feed_error:
            self._log.warning("ffmpeg_feed_failed", error=self.feed_error)

    def _stop_feeding(self) -> None:
        """FFmpeg is stopping or gone: end a read that may be waiting for the source's next
        bytes (the pump then closes the pipe: FFmpeg sees the end of its input)."""
        source, self._feeding = self._feeding, None
        if source is not None:
            _close_aside(source)

    def _close_tap_fds(self) -> None:
        fds, self._tap_fds = self._tap_fds, None
        for fd in fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _tap_reader(self) -> asyncio.Task[None] | None:
        """Once FFmpeg has started: the task that counts its tap until FFmpeg closes it."""
        fds, self._tap_fds = self._tap_fds, None
        if fds is None:
            return None
        read_fd, write_fd = fds
        os.close(write_fd)  # FFmpeg holds the only write end: its exit ends the stream
        self._tap = _ByteCounter()
        return asyncio.create_task(self._read_tap(read_fd, self._tap))

    async def _read_tap(self, read_fd: int, counter: _ByteCounter) -> None:
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        try:
            loop = asyncio.get_running_loop()
            self._tap_transport, _ = await loop.connect_read_pipe(lambda: counter, pipe)
        except BaseException as exc:
            pipe.close()
            if isinstance(exc, OSError):  # FFmpeg's tap slave then fails alone: no size shown
                self._log.warning("ffmpeg_tap_failed", error=str(exc))
                return
            raise
        await counter.closed

    def _close_tap(self) -> None:
        transport, self._tap_transport = self._tap_transport, None
        if transport is not None:
            transport.close()

    def delay_next_retry(self, seconds: float) -> None:
        """Wait at least ``seconds`` before the next restart (e.g. a stream key was rejected:
        retrying at the usual pace would only hammer the destination). Call it from ``on_exit``.
        """
        self._min_next_delay = max(self._min_next_delay, seconds)

    def retry_now(self) -> None:
        """Restart at once after this exit, not counted as a failure (the next attempt changes
        what made this one fail, e.g. a longer probe). Call it from ``on_exit``; a delay asked
        for with :meth:`delay_next_retry` still applies.
        """
        self._retry_now = True

    async def stop(self, reason: str = "stop requested") -> SupervisorState:
        """Stop FFmpeg gracefully and return the terminal state.

        Idempotent and safe from any state: during a backoff sleep it returns at once without
        starting another process; after the end it just returns the state. Cancelling the caller
        does not interrupt the stop.
        """
        if self._task is None:
            if not self._state.terminal:
                await self._set_state(SupervisorState.FINISHED, f"{reason} before start")
            return self._state
        if not self._stop_event.is_set():
            self._stop_reason = reason
            self._stop_event.set()
        await asyncio.wait({self._task})
        return self._state

    async def wait(self) -> SupervisorState:
        """Wait until supervision ends (stopped or given up) and return the terminal state."""
        if self._task is None:
            raise RuntimeError("not started")
        await asyncio.wait({self._task})
        return self._state

    async def __aenter__(self) -> Self:
        """Start on entering the block."""
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop gracefully on leaving the block."""
        await self.stop()

    # -- the state machine ------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0  # consecutive failed runs; a stable run resets it
        reason = "start requested"
        try:
            while True:
                await self._set_state(SupervisorState.STARTING, reason)
                outcome = await self._run_once()
                if self._stop_event.is_set():
                    await self._finish_stop(outcome)
                    return
                if outcome.returncode == 0 and not outcome.hung and self._config.finish_on_success:
                    await self._set_state(SupervisorState.FINISHED, outcome.reason)
                    return
                self._last_error = "\n".join(self._stderr_tail) or outcome.reason
                retry_now, self._retry_now = self._retry_now, False
                if not retry_now:
                    failures = 1 if outcome.stable else failures + 1
                max_restarts = self._config.max_restarts
                if max_restarts is not None and failures > max_restarts:
                    await self._set_state(
                        SupervisorState.FAILED,
                        f"gave up after {failures - 1} restarts: {outcome.reason}",
                    )
                    return
                delay = (
                    0.0 if retry_now else backoff_delay(failures, self._config, self._rng.random())
                )
                delay, self._min_next_delay = max(delay, self._min_next_delay), 0.0
                await self._set_state(
                    SupervisorState.RETRYING, f"{outcome.reason}; restarting in {delay:.2f} s"
                )
                if await self._stop_requested_within(delay):
                    await self._finish_stop(_Outcome(reason=self._stop_reason, requested=True))
                    return
                self._restarts += 1
                reason = f"restart {self._restarts} after: {outcome.reason}"
        except asyncio.CancelledError:
            # _run_once has killed and reaped the process; hooks are not awaited while cancelled.
            # The one move outside TRANSITIONS (from any state, also a terminal one whose hook
            # was being awaited).
            self._state, self._reason = SupervisorState.KILLED, "supervisor task cancelled"
            self._log.warning("ffmpeg_supervisor_cancelled")
            raise

    async def _finish_stop(self, outcome: _Outcome) -> None:
        if self._state is not SupervisorState.STOPPING:
            await self._set_state(SupervisorState.STOPPING, self._stop_reason)
        code = outcome.returncode
        if outcome.killed:
            grace = self._config.graceful_stop_timeout_s
            await self._set_state(
                SupervisorState.KILLED, f"killed after {grace:g} s: ignored 'q' and SIGINT"
            )
        elif code is None or code in _CLEAN_STOP_CODES:
            await self._set_state(SupervisorState.FINISHED, self._stop_reason)
        else:
            self._last_error = "\n".join(self._stderr_tail) or outcome.reason
            await self._set_state(SupervisorState.FAILED, f"while stopping: {outcome.reason}")

    async def _stop_requested_within(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stop_event.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _run_once(self) -> _Outcome:
        """Start one process and supervise it until it exits, hangs or is stopped."""
        self._stderr_tail.clear()
        self._running_since = None
        self._tap = None
        try:
            return await self._spawn_and_watch()
        finally:
            self._close_tap_fds()  # a tap opened for a process that never started
            self._close_feed()  # likewise a feed
            self._close_tap()

    async def _spawn_and_watch(self) -> _Outcome:
        try:
            args = self._argv_factory()
            if inspect.isawaitable(args):
                args = await args
            argv = build_argv(
                self._config.ffmpeg_path, args, progress_period_s=self._config.progress_period_s
            )
        except Exception as exc:
            self._log.exception("ffmpeg_argv_failed")
            return _Outcome(reason=f"could not build the command: {exc}")
        if self._stop_event.is_set():
            return _Outcome(reason=self._stop_reason, requested=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
                start_new_session=False,
                env={**os.environ, **self._env} if self._env else None,
                preexec_fn=_die_with_parent_preexec(),
                pass_fds=(
                    *((self._tap_fds[1],) if self._tap_fds else ()),
                    *((self._feed[0],) if self._feed else ()),
                ),
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return _Outcome(reason=f"could not start {argv[0]}: {exc}")
        loop = asyncio.get_running_loop()
        self._pid, self._started_at = proc.pid, datetime.now(UTC)
        self._last_advance = loop.time()
        self._log.info("ffmpeg_started", pid=proc.pid, restarts=self._restarts)
        assert proc.stdout is not None
        assert proc.stderr is not None
        progressed = asyncio.Event()
        readers = {
            asyncio.create_task(self._read_progress(proc.stdout, progressed)),
            asyncio.create_task(self._read_stderr(proc.stderr)),
        }
        if (tap := self._tap_reader()) is not None:
            readers.add(tap)
        if (pump := self._feed_writer()) is not None:
            readers.add(pump)
        try:
            stale, killed = await self._watch(proc, progressed)
        finally:
            await self._reap(proc, readers)
        returncode = proc.returncode
        assert returncode is not None
        tail = list(self._stderr_tail)
        stable = (
            self._running_since is not None
            and loop.time() - self._running_since >= self._config.stable_after_s
        )
        reason = stale or _exit_reason(returncode, tail)
        self._log.info("ffmpeg_exited", pid=proc.pid, code=returncode, reason=reason)
        await self._call(self._on_exit, returncode, tail)
        return _Outcome(
            reason=reason,
            returncode=returncode,
            requested=self._stop_event.is_set(),
            killed=killed,
            hung=stale is not None,
            stable=stable,
        )

    async def _watch(
        self, proc: asyncio.subprocess.Process, progressed: asyncio.Event
    ) -> tuple[str | None, bool]:
        """Wait for exit, stop() or staleness; returns (stale reason or None, SIGKILL needed)."""
        loop = asyncio.get_running_loop()
        stale_s = self._config.stale_timeout_s
        exited = asyncio.ensure_future(proc.wait())
        stop_asked = asyncio.ensure_future(self._stop_event.wait())
        first_progress = asyncio.ensure_future(progressed.wait())
        pending = {exited, stop_asked, first_progress}
        try:
            while True:
                timeout = None
                if stale_s is not None:
                    timeout = max(0.0, self._last_advance + stale_s - loop.time())
                done, _ = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if first_progress in pending and (first_progress in done or progressed.is_set()):
                    # Before the exit: a run that reported progress was running, however short.
                    pending.discard(first_progress)
                    self._running_since = loop.time()
                    self._ever_ran = True
                    await self._set_state(SupervisorState.RUNNING, "progress received")
                    continue
                if exited in done:
                    return None, False
                if stop_asked in done:
                    await self._set_state(SupervisorState.STOPPING, self._stop_reason)
                    return None, await self._terminate(proc)
                if stale_s is not None and loop.time() - self._last_advance >= stale_s:
                    reason = f"no progress for {stale_s:g} s"
                    self._log.warning("ffmpeg_stale", pid=proc.pid, stale_timeout_s=stale_s)
                    return reason, await self._terminate(proc)
        finally:
            for waiter in (exited, stop_asked, first_progress):
                waiter.cancel()
            await asyncio.gather(exited, stop_asked, first_progress, return_exceptions=True)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> bool:
        """'q', then SIGINT, then SIGKILL; True if SIGKILL was needed. Always reaps."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        kill_at = loop.time() + cfg.graceful_stop_timeout_s
        if proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b"q\n")
        # A fed FFmpeg may be blocked reading its pipe (a pipe read does not watch for 'q' or
        # SIGINT): the end of its input makes it finish the file just as cleanly.
        self._stop_feeding()
        if await _exited_within(proc, min(cfg.sigint_after_s, cfg.graceful_stop_timeout_s)):
            return False
        self._log.info("ffmpeg_stop_escalated", pid=proc.pid, signal="SIGINT")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        if await _exited_within(proc, max(0.0, kill_at - loop.time())):
            return False
        self._log.warning("ffmpeg_stop_escalated", pid=proc.pid, signal="SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return True

    async def _reap(
        self, proc: asyncio.subprocess.Process, readers: set[asyncio.Task[None]]
    ) -> None:
        """Make sure the process is gone and waited for, and the pipe readers have finished."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        self._stop_feeding()
        _, late = await asyncio.wait(readers, timeout=_READER_DRAIN_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self._pid = None

    async def _read_progress(self, stream: asyncio.StreamReader, progressed: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        parser = ProgressParser()
        last_position: tuple[str | None, str, str] | None = None
        while (line := await _readline(stream)) is not None:
            snapshot = parser.feed(line)
            if snapshot is None:
                continue
            if snapshot.total_size == NOT_AVAILABLE:
                size = self._tap.count if self._tap is not None else self._written_bytes()
                if size is not None:
                    snapshot = snapshot.with_total_size(size)
            # A block that moves nothing (FFmpeg spinning on a stalled input) is not progress.
            position = (snapshot.frame, snapshot.total_size, snapshot.out_time_ms)
            if position != last_position:
                last_position = position
                self._last_advance = loop.time()
                progressed.set()
            self._last_progress = snapshot
            await self._call(self._on_progress, snapshot)

    def _written_bytes(self) -> int | None:
        if self.size_source is None:
            return None
        try:
            return self.size_source()
        except Exception:
            self._log.exception("ffmpeg_supervisor_hook_failed", hook="size_source")
            return None

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while (line := await _readline(stream)) is not None:
            if line.strip():
                self._stderr_tail.append(line)
                if self._on_stderr is not None:
                    try:
                        self._on_stderr(line)
                    except Exception:
                        self._log.exception("ffmpeg_supervisor_hook_failed", hook="on_stderr")

    async def _set_state(self, state: SupervisorState, reason: str) -> None:
        if state not in TRANSITIONS[self._state]:
            raise IllegalTransition(self._state, state)
        self._state, self._reason = state, reason
        # Retries before the source was ever live are waiting, not failing: no warning each time.
        failing = state in _FAILING and (self._ever_ran or state is not SupervisorState.RETRYING)
        log = self._log.warning if failing else self._log.info
        log("ffmpeg_state", state=state.value, reason=reason)
        await self._call(self._on_state, state, reason)

    async def _call(self, hook: Callable[..., Awaitable[None]] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            await hook(*args)
        except Exception:
            self._log.exception("ffmpeg_supervisor_hook_failed", hook=getattr(hook, "__name__", ""))
