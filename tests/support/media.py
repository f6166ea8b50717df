"""Live test media made by real FFmpeg processes (no mocks).

Every source encodes lavfi ``testsrc2`` video + ``sine`` audio to H.264 (libx264 ultrafast,
zerolatency, one keyframe per second, yuv420p) + AAC (48 kHz stereo by default), paced in real
time with ``-re``, and keeps running until it is stopped.

Sources (what a client such as the recorder connects to, all on 127.0.0.1):

* :class:`SrtSource`  -- ffmpeg is an SRT *listener* sending MPEG-TS; clients call
  ``srt://127.0.0.1:<port>``.
* :class:`RtmpSource` -- ffmpeg is an RTMP *server* (``-listen 1``) that a client PULLS from:
  ``rtmp://127.0.0.1:<port>/live/stream``.
* :class:`UdpSource`  -- ffmpeg pushes MPEG-TS to ``udp://127.0.0.1:<port>`` (the client listens).
* :class:`HlsSource`  -- ffmpeg writes a live HLS playlist served by a stdlib HTTP server:
  ``http://127.0.0.1:<port>/live.m3u8``.

Receivers (for restream tests that publish TO them), both record to an MPEG-TS file:

* :class:`RtmpReceiver` -- ``ffmpeg -listen 1 -i rtmp://127.0.0.1:<port>/live/key``.
* :class:`SrtReceiver`  -- ``ffmpeg -i srt://127.0.0.1:<port>?mode=listener``; publishers call
  ``srt://127.0.0.1:<port>``.

Verified FFmpeg 5.1 behaviour this module is built around:

* An SRT listener *output* (and an RTMP ``-listen 1`` output) blocks in its open until one client
  connects, encodes only from then on (so every client starts at t=0 with a keyframe), serves that
  one client only (the listening socket is closed on accept) and EXITS (rc 1, "Input/output
  error" / "Broken pipe") when the client disconnects. Hence ``keep_serving``: the owner relaunches
  ffmpeg on the same port whenever it exits while the source is meant to be up.
* Listener readiness is detected without consuming the single connection: the ffmpeg process
  owns a socket bound (UDP, SRT) or in LISTEN state (TCP, RTMP) on the port, read from /proc.
* A listener *input* (receivers) exits with rc 0 after the publisher disconnects, leaving a
  complete file.
* ffmpeg exits within ~0.1 s on SIGTERM, even while blocked waiting for a client.
* ffmpeg pushing to a UDP port nobody listens on keeps running.

All processes are started with argv lists, reaped (SIGTERM, then SIGKILL), registered for an
atexit safety net, and - where ``setpriv`` is available - get PDEATHSIG=KILL so they die with the
test process even if it is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from support.infra import free_port

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"

SourceKind = Literal["srt", "rtmp", "udp", "hls"]
ReceiverKind = Literal["rtmp", "srt"]

#: Default time allowed for a process to become ready (port bound, first frames, ...).
READY_TIMEOUT = 15.0
#: Time between SIGTERM and SIGKILL when stopping a process.
TERM_GRACE = 5.0


class MediaSourceError(RuntimeError):
    """A live media helper failed; the message carries ffmpeg's stderr tail."""


# --------------------------------------------------------------------------------------------
# Media description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """What the test media looks like. Defaults keep CPU low on a 2-core machine."""

    width: int = 640
    height: int = 360
    fps: int = 25
    video_bitrate: str | None = None  # e.g. "2M"; None lets x264 pick (CRF 23)
    audio_bitrate: str = "128k"
    sample_rate: int = 48000
    channels: int = 2
    tone_hz: int = 1000

    @classmethod
    def of(
        cls, size: str = "640x360", fps: int = 25, video_bitrate: str | None = None, **kw: Any
    ) -> MediaSpec:
        """Build from a ``"WxH"`` size string: ``MediaSpec.of("1920x1080", fps=30)``."""
        m = re.fullmatch(r"(\d+)x(\d+)", size)
        if not m:
            raise ValueError(f"size must look like 1920x1080, got {size!r}")
        return cls(int(m[1]), int(m[2]), fps, video_bitrate, **kw)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def input_args(self) -> list[str]:
        """One real-time lavfi input with two streams: [out0] video, [out1] audio."""
        graph = (
            f"testsrc2=size={self.size}:rate={self.fps}[out0];"
            f"sine=frequency={self.tone_hz}:sample_rate={self.sample_rate}[out1]"
        )
        return ["-re", "-f", "lavfi", "-i", graph]

    def encode_args(self) -> list[str]:
        video = [
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-pix_fmt", "yuv420p",
            "-g", str(self.fps), "-keyint_min", str(self.fps), "-sc_threshold", "0",
        ]  # fmt: skip
        if self.video_bitrate:
            video += ["-b:v", self.video_bitrate, "-maxrate", self.video_bitrate]
            video += ["-bufsize", self.video_bitrate]
        audio = [
            "-c:a", "aac", "-b:a", self.audio_bitrate,
            "-ar", str(self.sample_rate), "-ac", str(self.channels),
        ]  # fmt: skip
        return [*video, *audio]

    def source_args(self) -> list[str]:
        return [*self.input_args(), *self.encode_args()]


# --------------------------------------------------------------------------------------------
# Ports, /proc and waiting
# --------------------------------------------------------------------------------------------


_TCP_LISTEN = "0A"


def _proc_net(proto: Literal["tcp", "udp"]) -> Iterator[tuple[int, str, int]]:
    """Yield (local_port, state, inode) for every socket of ``proto`` (IPv4 and IPv6)."""
    for name in (proto, f"{proto}6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            yield port, fields[3], int(fields[9])


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def port_in_use(port: int, proto: Literal["tcp", "udp"], *, pid: int | None = None) -> bool:
    """Whether a UDP socket is bound / a TCP socket LISTENs on ``port`` (by ``pid`` if given).

    Reads /proc, so it never connects and never consumes a one-shot listener.
    """
    inodes = _socket_inodes(pid) if pid is not None else None
    for p, state, inode in _proc_net(proto):
        if p != port or (proto == "tcp" and state != _TCP_LISTEN):
            continue
        if inodes is None or inode in inodes:
            return True
    return False


async def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> Any:
    """Poll ``condition`` (sync, or returning an awaitable) until truthy; return its value.

    ``abort`` may return an error text to fail fast (e.g. the process died).
    Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if abort is not None and (reason := abort()):
            raise MediaSourceError(f"gave up waiting for {message}: {reason}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        await asyncio.sleep(interval)


def ffmpeg_children(ppid: int | None = None) -> list[tuple[int, str]]:
    """(pid, state) of every ffmpeg/ffprobe process whose parent is ``ppid`` (default: us).

    Zombies (state ``Z``) are included: an unreaped child is a leak too.
    """
    ppid = os.getpid() if ppid is None else ppid
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may contain spaces/parens, so split at the last ")".
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(parent) == ppid and comm in {"ffmpeg", "ffprobe", "setpriv"}:
            found.append((int(entry.name), state))
    return found


# --------------------------------------------------------------------------------------------
# Process ownership
# --------------------------------------------------------------------------------------------

_LIVE_PIDS: set[int] = set()
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    """atexit safety net: SIGKILL and reap any ffmpeg we started and did not reap."""
    with _LIVE_LOCK:
        pids = list(_LIVE_PIDS)
        _LIVE_PIDS.clear()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        log.warning("killed leftover media process %d at exit", pid)


atexit.register(_kill_leftovers)


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` when available: the child dies with the test process.

    setpriv execs the command, so the pid (and /proc comm) is ffmpeg's own.
    """
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or not setpriv:
        return ()
    try:
        out = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in out else ()


class FfmpegProcess:
    """One ffmpeg/ffprobe child: argv list, stderr tail, ``-progress`` parsing, always reaped.

    If the argv contains ``-progress pipe:1``, ``progress`` holds the latest key/value block
    (``frame``, ``out_time_us``, ...) and ``frames`` the frame counter.
    """

    def __init__(self, argv: Sequence[str], *, name: str = "ffmpeg", tail_lines: int = 60):
        self.argv = list(argv)
        self.name = name
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.progress: dict[str, str] = {}
        self.started_at: float | None = None

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def frames(self) -> int:
        try:
            return int(self.progress.get("frame", "0"))
        except ValueError:
            return 0

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._tail)

    def exit_reason(self) -> str | None:
        """Text for ``wait_until(abort=...)``: set once the process has exited."""
        if self._proc is None or self._proc.returncode is None:
            return None
        return f"{self.name} exited with rc={self._proc.returncode}:\n{self.stderr_tail}"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> Self:
        if self._proc is not None:
            raise MediaSourceError(f"{self.name} already started")
        self._proc = await asyncio.create_subprocess_exec(
            *_pdeathsig_prefix(),
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        with _LIVE_LOCK:
            _LIVE_PIDS.add(self._proc.pid)
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
            asyncio.create_task(self._read_progress(self._proc.stdout)),
        ]
        log.debug("%s started pid=%d: %s", self.name, self._proc.pid, " ".join(self.argv))
        return self

    async def wait(self) -> int:
        """Wait for exit (the process is reaped) and for the output readers to drain."""
        if self._proc is None:
            raise MediaSourceError(f"{self.name} was never started")
        rc = await self._proc.wait()
        with _LIVE_LOCK:
            _LIVE_PIDS.discard(self._proc.pid)
        await asyncio.gather(*self._readers, return_exceptions=True)
        return rc

    async def stop(self, grace: float = TERM_GRACE) -> int | None:
        """SIGTERM, wait ``grace`` s, then SIGKILL; always reaps. Returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace)
            except TimeoutError:
                log.warning("%s pid=%d ignored SIGTERM; killing", self.name, self._proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        return await self.wait()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(4096):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            self._tail.extend(s.decode(errors="replace") for s in lines if s.strip())
        if pending.strip():
            self._tail.append(pending.decode(errors="replace"))

    async def _read_progress(self, stream: asyncio.StreamReader) -> None:
        block: dict[str, str] = {}
        while line := await stream.readline():
            key, sep, value = line.decode(errors="replace").strip().partition("=")
            if not sep:
                continue
            block[key] = value
            if key == "progress":
                self.progress = block
                block = {}


def _ffmpeg_argv(*args: str) -> list[str]:
    return [
        FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
        "-progress", "pipe:1", "-stats_period", "0.25", *args,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Supervised live processes
# --------------------------------------------------------------------------------------------


class _Supervised:
    """Owns one ffmpeg at a time; with ``keep_serving`` relaunches it on exit while started."""

    kind: ClassVar[str] = "media"
    proto: ClassVar[Literal["tcp", "udp"]] = "tcp"

    def __init__(
        self,
        *,
        port: int | None,
        keep_serving: bool,
        ready_timeout: float = READY_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_port(self.proto)
        self.keep_serving = keep_serving
        self.ready_timeout = ready_timeout
        self.name = name or f"{self.kind}:{self.port}"
        self._wanted = False
        self._proc: FfmpegProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._exits: list[int] = []
        #: How many ffmpeg processes were launched over this object's life.
        self.launches = 0

    # -- to implement -------------------------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        raise NotImplementedError

    async def _on_start(self) -> None:
        """Called before the first launch of each start()."""

    async def _on_stop(self) -> None:
        """Called after the process is reaped in stop()."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- state --------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while the current ffmpeg process is alive."""
        return self._proc is not None and self._proc.is_running

    @property
    def started(self) -> bool:
        """True between start() and stop() (even during a keep-serving relaunch gap)."""
        return self._wanted

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def process(self) -> FfmpegProcess | None:
        return self._proc

    @property
    def exit_codes(self) -> list[int]:
        """Exit codes of the processes that ended (relaunched or stopped), oldest first."""
        return list(self._exits)

    @property
    def stderr_tail(self) -> str:
        return self._proc.stderr_tail if self._proc else ""

    def __repr__(self) -> str:
        state = "running" if self.is_running else ("started" if self._wanted else "stopped")
        return f"<{type(self).__name__} {self.url} {state} launches={self.launches}>"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> Self:
        """Launch ffmpeg and wait until it is ready for a client. Idempotent."""
        if self._wanted:
            return self
        self._wanted = True
        try:
            await self._on_start()
            proc = await self._launch()
            await self._wait_ready(proc)
        except BaseException:
            tail = self.stderr_tail
            await self.stop()
            log.error("%s failed to start; ffmpeg stderr tail:\n%s", self.name, tail)
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")
        log.info("%s ready at %s (pid %s)", self.name, self.url, self.pid)
        return self

    async def stop(self) -> None:
        """Stop (and reap) ffmpeg; no relaunch. The port is kept for a later start()."""
        self._wanted = False
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._proc is not None:
            was_running = self._proc.returncode is None
            rc = await self._proc.stop()  # also reaps/unregisters an already-exited process
            if was_running and rc is not None:
                self._exits.append(rc)
        await self._on_stop()

    async def restart(self) -> Self:
        await self.stop()
        return await self.start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _launch(self) -> FfmpegProcess:
        self.launches += 1
        proc = FfmpegProcess(self._argv(), name=f"{self.name}#{self.launches}")
        self._proc = proc
        await proc.start()
        return proc

    async def _supervise(self) -> None:
        failures = 0
        while self._wanted:
            proc = self._proc
            assert proc is not None
            rc = await proc.wait()
            self._exits.append(rc)
            if not self._wanted:
                return
            lived = time.monotonic() - (proc.started_at or 0.0)
            if not self.keep_serving:
                log.warning(
                    "%s: ffmpeg exited unexpectedly rc=%s after %.1fs; stderr tail:\n%s",
                    self.name, rc, lived, proc.stderr_tail,
                )  # fmt: skip
                return
            # A client disconnecting makes a listener exit: normal, relaunch at once.
            failures = failures + 1 if lived < 1.0 else 0
            log.info("%s: ffmpeg exited rc=%s after %.1fs; relaunching", self.name, rc, lived)
            if failures:
                log.warning(
                    "%s: quick exit #%d; stderr tail:\n%s", self.name, failures, proc.stderr_tail
                )
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))
            while self._wanted:
                try:
                    await self._launch()
                    break
                except Exception:
                    log.exception("%s: relaunch failed", self.name)
                    await asyncio.sleep(1.0)


class LiveSource(_Supervised):
    """Base of the live sources. ``url`` is what a client uses; see the module docstring."""

    def __init__(
        self,
        spec: MediaSpec | None = None,
        *,
        port: int | None = None,
        keep_serving: bool = False,
        ready_timeout: float = READY_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.spec = spec or MediaSpec()
        super().__init__(
            port=port, keep_serving=keep_serving, ready_timeout=ready_timeout, name=name
        )

    async def _wait_listening(self, proc: FfmpegProcess) -> None:
        assert proc.pid is not None
        pid = proc.pid
        await wait_until(
            lambda: port_in_use(self.port, self.proto, pid=pid),
            timeout=self.ready_timeout,
            message=f"{self.name} to listen on {self.proto}/{self.port}",
            abort=proc.exit_reason,
        )


class SrtSource(LiveSource):
    """SRT listener sending MPEG-TS. Clients call ``srt://127.0.0.1:<port>``.

    One client at a time. ffmpeg exits when its client leaves; ``keep_serving`` (default on)
    relaunches it so the next (or a reconnecting) client finds a listener again.
    ``listener_options`` are extra SRT query options for the listener (e.g. latency).
    """

    kind = "srt"
    proto = "udp"

    def __init__(
        self,
        spec: MediaSpec | None = None,
        *,
        port: int | None = None,
        keep_serving: bool = True,
        listener_options: Mapping[str, str | int] | None = None,
        **kw: Any,
    ) -> None:
        self.listener_options = dict(listener_options or {})
        super().__init__(spec, port=port, keep_serving=keep_serving, **kw)

    @property
    def url(self) -> str:
        return f"srt://{LOCALHOST}:{self.port}"

    def _argv(self) -> list[str]:
        query = "&".join(
            f"{k}={v}" for k, v in {"mode": "listener", **self.listener_options}.items()
        )
        return _ffmpeg_argv(*self.spec.source_args(), "-f", "mpegts", f"{self.url}?{query}")

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        await self._wait_listening(proc)


class RtmpSource(LiveSource):
    """RTMP server (``ffmpeg -f flv -listen 1``) a client PULLS from.

    URL: ``rtmp://127.0.0.1:<port>/<app>/<stream>`` (default ``/live/stream``). One client at a
    time; ffmpeg exits when it leaves and ``keep_serving`` (default on) relaunches it.
    """

    kind = "rtmp"
    proto = "tcp"

    def __init__(
        self,
        spec: MediaSpec | None = None,
        *,
        port: int | None = None,
        keep_serving: bool = True,
        app: str = "live",
        stream: str = "stream",
        **kw: Any,
    ) -> None:
        self.app = app
        self.stream = stream
        super().__init__(spec, port=port, keep_serving=keep_serving, **kw)

    @property
    def url(self) -> str:
        return f"rtmp://{LOCALHOST}:{self.port}/{self.app}/{self.stream}"

    def _argv(self) -> list[str]:
        return _ffmpeg_argv(*self.spec.source_args(), "-f", "flv", "-listen", "1", self.url)

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        await self._wait_listening(proc)


class UdpSource(LiveSource):
    """Pushes MPEG-TS (1316-byte datagrams) to ``udp://<host>:<port>``; the client listens there.

    ``port`` is the destination port (a free UDP port if omitted). Ready once ffmpeg has
    encoded frames, i.e. datagrams are flowing whether or not anyone listens.
    """

    kind = "udp"
    proto = "udp"

    def __init__(
        self,
        spec: MediaSpec | None = None,
        *,
        port: int | None = None,
        host: str = LOCALHOST,
        keep_serving: bool = False,
        **kw: Any,
    ) -> None:
        self.host = host
        super().__init__(spec, port=port, keep_serving=keep_serving, **kw)

    @property
    def url(self) -> str:
        return f"udp://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        return _ffmpeg_argv(*self.spec.source_args(), "-f", "mpegts", f"{self.url}?pkt_size=1316")

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        await wait_until(
            lambda: proc.frames > 0,
            timeout=self.ready_timeout,
            message=f"{self.name} to send frames",
            abort=proc.exit_reason,
        )


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".m3u8": "application/vnd.apple.mpegurl",
        ".ts": "video/mp2t",
    }

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache, no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("hls http: " + format, *args)


class _BearerHandler(_QuietHandler):
    """Serves only requests that carry ``Authorization: Bearer <token>``; 401 otherwise (an
    origin behind a login). Counts the refusals."""

    token = ""
    refused: list[str]

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused.append(self.path)
            self.send_error(401, "Unauthorized")
            return
        super().do_GET()


class HlsSource(LiveSource):
    """Live HLS (1 s segments, 6 in the playlist, no ENDLIST) served over HTTP.

    URL: ``http://127.0.0.1:<port>/live.m3u8``; ``port`` is the HTTP port. Files are written to
    ``workdir`` (a temp dir if omitted), which is emptied on each start(). Ready once the
    playlist lists ``min_segments`` segments and is served with HTTP 200.
    """

    kind = "hls"
    proto = "tcp"
    PLAYLIST = "live.m3u8"

    def __init__(
        self,
        spec: MediaSpec | None = None,
        *,
        workdir: Path | str | None = None,
        port: int | None = None,
        min_segments: int = 2,
        keep_serving: bool = False,
        metadata: Mapping[str, str] | None = None,
        bearer: str | None = None,
        **kw: Any,
    ) -> None:
        self._own_workdir = workdir is None
        self.bearer = bearer
        """When set, the origin answers 401 to requests without ``Authorization: Bearer <it>``."""
        self.refused: list[str] = []
        """Paths refused with 401 (``bearer`` set)."""
        self.metadata = dict(metadata or {})
        """``-metadata`` of the stream (``service_name``: the MPEG-TS program's name)."""
        self.workdir = Path(workdir) if workdir else None
        self.min_segments = min_segments
        self._httpd: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        super().__init__(spec, port=port, keep_serving=keep_serving, **kw)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/{self.PLAYLIST}"

    @property
    def playlist_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / self.PLAYLIST

    def segments(self) -> list[str]:
        """Segment URIs currently listed in the playlist (empty if there is none yet)."""
        if self.workdir is None:
            return []
        try:
            text = self.playlist_path.read_text()
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]

    def media_sequence(self) -> int | None:
        if self.workdir is None:
            return None
        with contextlib.suppress(OSError):
            m = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", self.playlist_path.read_text())
            return int(m[1]) if m else None
        return None

    def _argv(self) -> list[str]:
        assert self.workdir is not None
        return _ffmpeg_argv(
            *self.spec.source_args(),
            *(a for k, v in self.metadata.items() for a in ("-metadata", f"{k}={v}")),
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "6",
            "-hls_flags", "delete_segments+omit_endlist+temp_file+independent_segments",
            "-hls_segment_filename", str(self.workdir / "seg_%05d.ts"),
            str(self.playlist_path),
        )  # fmt: skip

    async def _on_start(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="reelhouse-hls-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for old in self.workdir.iterdir():
            if old.is_file() and (old.suffix in {".ts", ".m3u8", ".tmp"}):
                old.unlink()
        handler: Any = functools.partial(_QuietHandler, directory=str(self.workdir))
        if self.bearer is not None:
            bearer_class = type("Bearer", (_BearerHandler,),
                                {"token": self.bearer, "refused": self.refused})  # fmt: skip
            handler = functools.partial(bearer_class, directory=str(self.workdir))
        self._httpd = ThreadingHTTPServer((LOCALHOST, self.port), handler)
        self._httpd.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"hls-http-{self.port}",
            daemon=True,
        )
        self._http_thread.start()

    async def _on_stop(self) -> None:
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None

    async def aclose(self) -> None:
        """stop() and, if the temp workdir is ours, delete it."""
        await self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        await wait_until(
            lambda: len(self.segments()) >= self.min_segments,
            timeout=self.ready_timeout,
            message=f"{self.name} playlist with {self.min_segments} segments",
            abort=proc.exit_reason,
        )
        await wait_until(
            lambda: asyncio.to_thread(self._http_ok),
            timeout=self.ready_timeout,
            message=f"{self.url} to answer 200",
        )

    def _http_ok(self) -> bool:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        try:
            request = urllib.request.Request(self.url, headers=headers)  # noqa: S310 (ours)
            with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 (our own http)
                return resp.status == 200
        except OSError:
            return False


# --------------------------------------------------------------------------------------------
# Receivers (publish targets for restream tests)
# --------------------------------------------------------------------------------------------


class LiveReceiver(_Supervised):
    """Listens for one publisher and records what it receives (``-c copy``) to ``output``.

    ffmpeg exits with rc 0 when the publisher disconnects, leaving a complete file:
    :meth:`wait_finished` waits for that. With ``keep_serving`` it listens again after each
    publisher and writes the next session to ``<stem>-001<suffix>``, ``-002``, ...
    """

    def __init__(
        self,
        output: Path | str,
        *,
        port: int | None = None,
        keep_serving: bool = False,
        fmt: str = "mpegts",
        ready_timeout: float = READY_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.output_path = Path(output)
        self.fmt = fmt
        super().__init__(
            port=port, keep_serving=keep_serving, ready_timeout=ready_timeout, name=name
        )

    def _output_for(self, launch: int) -> Path:
        if launch <= 1:
            return self.output_path
        p = self.output_path
        return p.with_name(f"{p.stem}-{launch - 1:03d}{p.suffix}")

    @property
    def output_files(self) -> list[Path]:
        """Files written so far (one per publisher session), oldest first."""
        files = [self._output_for(i) for i in range(1, self.launches + 1)]
        return [f for f in files if f.exists()]

    @property
    def received_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.output_files)

    def _input_args(self) -> list[str]:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        out = self._output_for(self.launches)
        return _ffmpeg_argv(*self._input_args(), "-c", "copy", "-f", self.fmt, "-y", str(out))

    async def _wait_ready(self, proc: FfmpegProcess) -> None:
        assert proc.pid is not None
        pid = proc.pid
        await wait_until(
            lambda: port_in_use(self.port, self.proto, pid=pid),
            timeout=self.ready_timeout,
            message=f"{self.name} to listen on {self.proto}/{self.port}",
            abort=proc.exit_reason,
        )

    async def wait_finished(self, timeout: float = 30.0) -> int:
        """Wait until the current ffmpeg exits (publisher gone, file complete); its exit code."""
        proc = self._proc
        if proc is None:
            raise MediaSourceError(f"{self.name} was never started")
        return await asyncio.wait_for(proc.wait(), timeout)


class RtmpReceiver(LiveReceiver):
    """RTMP server that accepts a PUBLISH at ``rtmp://127.0.0.1:<port>/<app>/<key>``."""

    kind = "rtmp-rx"
    proto = "tcp"

    def __init__(
        self, output: Path | str, *, app: str = "live", key: str = "key", **kw: Any
    ) -> None:
        self.app = app
        self.key = key
        super().__init__(output, **kw)

    @property
    def url(self) -> str:
        return f"rtmp://{LOCALHOST}:{self.port}/{self.app}/{self.key}"

    def _input_args(self) -> list[str]:
        return ["-listen", "1", "-i", self.url]


class SrtReceiver(LiveReceiver):
    """SRT listener a publisher calls at ``srt://127.0.0.1:<port>`` (MPEG-TS payload)."""

    kind = "srt-rx"
    proto = "udp"

    @property
    def url(self) -> str:
        return f"srt://{LOCALHOST}:{self.port}"

    def _input_args(self) -> list[str]:
        return ["-i", f"{self.url}?mode=listener"]


# --------------------------------------------------------------------------------------------
# Factories and client-side helpers
# --------------------------------------------------------------------------------------------

_SOURCES: dict[str, type[LiveSource]] = {
    "srt": SrtSource,
    "rtmp": RtmpSource,
    "udp": UdpSource,
    "hls": HlsSource,
}
_RECEIVERS: dict[str, type[LiveReceiver]] = {"rtmp": RtmpReceiver, "srt": SrtReceiver}


def make_source(kind: SourceKind, spec: MediaSpec | None = None, **kw: Any) -> LiveSource:
    """An unstarted source of ``kind``; ``kw`` go to its class (port, keep_serving, ...)."""
    try:
        cls = _SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; one of {sorted(_SOURCES)}") from None
    return cls(spec, **kw)


def make_receiver(kind: ReceiverKind, output: Path | str, **kw: Any) -> LiveReceiver:
    try:
        cls = _RECEIVERS[kind]
    except KeyError:
        raise ValueError(f"unknown receiver kind {kind!r}; one of {sorted(_RECEIVERS)}") from None
    return cls(output, **kw)


async def _run(argv: Sequence[str], *, timeout: float) -> tuple[int, str, str]:
    """Run to completion with a hard timeout; returns (rc, stdout, stderr). Always reaped."""
    proc = await asyncio.create_subprocess_exec(
        *_pdeathsig_prefix(),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    with _LIVE_LOCK:
        _LIVE_PIDS.add(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE_PIDS.discard(proc.pid)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def ffprobe(
    target: str | Path,
    *,
    timeout: float = 20.0,
    io_timeout: float = 10.0,
    analyzeduration: float = 2.0,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """``ffprobe -show_streams -show_format -of json`` of a URL or file, parsed.

    ``io_timeout`` is ffmpeg's generic ``-rw_timeout`` (any protocol); ``timeout`` is a hard
    limit on the whole run. Raises MediaSourceError (with stderr) on failure.
    """
    argv = [
        FFPROBE, "-v", "error",
        "-rw_timeout", str(int(io_timeout * 1e6)),
        "-analyzeduration", str(int(analyzeduration * 1e6)),
        *extra_args,
        "-show_streams", "-show_format", "-of", "json", str(target),
    ]  # fmt: skip
    try:
        rc, out, err = await _run(argv, timeout=timeout)
    except TimeoutError:
        raise MediaSourceError(f"ffprobe {target} timed out after {timeout}s") from None
    if rc != 0:
        raise MediaSourceError(f"ffprobe {target} failed rc={rc}: {err.strip()[-2000:]}")
    return json.loads(out)


def av_streams(probe: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(first video stream, first audio stream) of an ffprobe result; KeyError if missing."""
    streams = probe.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None or audio is None:
        kinds = [s.get("codec_type") for s in streams]
        raise KeyError(f"need a video and an audio stream, got {kinds}")
    return video, audio


def check_media(probe: Mapping[str, Any], spec: MediaSpec) -> list[str]:
    """Differences between an ffprobe result and ``spec`` (empty list = matches)."""
    try:
        video, audio = av_streams(probe)
    except KeyError as e:
        return [str(e)]
    expected = {
        "video codec": (video.get("codec_name"), "h264"),
        "video size": ((video.get("width"), video.get("height")), (spec.width, spec.height)),
        "audio codec": (audio.get("codec_name"), "aac"),
        "sample rate": (int(audio.get("sample_rate", 0)), spec.sample_rate),
        "channels": (audio.get("channels"), spec.channels),
    }
    return [
        f"{k}: got {got!r}, want {want!r}" for k, (got, want) in expected.items() if got != want
    ]


async def capture(
    url: str, output: Path | str, *, seconds: float = 2.0, timeout: float = 30.0
) -> Path:
    """Record ``seconds`` of ``url`` with ``-c copy`` into an MPEG-TS file (client side)."""
    out = Path(output)
    argv = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-rw_timeout", "10000000",
        "-i", url, "-t", str(seconds), "-c", "copy", "-f", "mpegts", "-y", str(out),
    ]  # fmt: skip
    rc, _, err = await _run(argv, timeout=timeout)
    if rc != 0 or not out.exists():
        raise MediaSourceError(f"capture of {url} failed rc={rc}: {err.strip()[-2000:]}")
    return out


async def publish(
    url: str,
    *,
    seconds: float = 3.0,
    spec: MediaSpec | None = None,
    fmt: str | None = None,
    timeout: float | None = None,
) -> int:
    """Publish ``seconds`` of live test media to ``url`` (rtmp -> flv, else mpegts).

    Returns ffmpeg's exit code; raises MediaSourceError if it fails.
    """
    spec = spec or MediaSpec()
    fmt = fmt or ("flv" if url.startswith("rtmp") else "mpegts")
    target = f"{url}?pkt_size=1316" if url.startswith("udp://") and "?" not in url else url
    argv = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *spec.source_args(),
        "-t", str(seconds), "-f", fmt, target,
    ]  # fmt: skip
    rc, _, err = await _run(argv, timeout=timeout or seconds + 20)
    if rc != 0:
        raise MediaSourceError(f"publish to {url} failed rc={rc}: {err.strip()[-2000:]}")
    return rc
