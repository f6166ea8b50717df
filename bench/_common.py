"""What the density benchmarks share: /proc sampling, owned processes, the source clip and SRT
sources, the measurement window and its summary, the engine (nats-server, FerretDB, the API and
one worker service), repeated runs and the report table.

Used by ``recording_density.py`` and ``restream_density.py`` (run from the repository root with
``uv run python bench/<script>.py``); not a benchmark itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import infra  # noqa: E402
from support.media import _pdeathsig_prefix, port_in_use  # noqa: E402

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
PDEATH = _pdeathsig_prefix()
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reelhouse/bench"
CLIP_SECONDS = 30
TARGET_ENGINE_CPU_PCT = 10.0
DATAPLANE = ROOT / ".cache/bin/reelhouse-ingest"
"""The ingest service's Go data plane, built by ``make install``."""


def ingest_env(
    *, srt_port: int, rtmp_port: int, fanout_port: int, relay_port: int
) -> dict[str, str]:
    """The REELHOUSE_INGEST_* settings of an ingest service on these loopback ports."""
    return {
        "REELHOUSE_INGEST_SRT_PORTS": f"{srt_port}-{srt_port}",
        "REELHOUSE_INGEST_RTMP_PORTS": f"{rtmp_port}-{rtmp_port}",
        "REELHOUSE_INGEST_FANOUT_PORT": str(fanout_port),
        "REELHOUSE_INGEST_RELAY_PORT": str(relay_port),
        "REELHOUSE_INGEST_PUBLIC_HOST": "127.0.0.1",
        "REELHOUSE_INGEST_DATAPLANE_PATH": str(DATAPLANE),
    }


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds = utime + stime) of a live process, or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    rest = data[data.rindex(")") + 2 :].split()
    if rest[0] == "Z":
        return None
    return comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    st = proc_stat(pid)
    return st[2] if st else None


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def pss_bytes(pid: int) -> int | None:
    """Proportional set size: shared pages (libraries) split between the processes using them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def children(ppid: int, comm: str | None = None) -> list[int]:
    """Live children of ``ppid`` (optionally only those whose comm is ``comm``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st and st[1] == ppid and (comm is None or st[0] == comm):
            found.append(int(entry.name))
    return sorted(found)


def host_cpu() -> tuple[int, int, int]:
    """(busy, total, irq + softirq) jiffies of the whole host from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return total - idle, total, fields[5] + fields[6]


def all_cpu() -> dict[int, float]:
    """CPU seconds (utime + stime) of every visible process. Not cutime: a reaped child's whole
    lifetime lands in its parent's cutime at once, which is not load in the window."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            data = (entry / "stat").read_text()
            f = data[data.rindex(")") + 2 :].split()
            out[int(entry.name)] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# Processes we own
# --------------------------------------------------------------------------------------------


def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``argv`` (from the main thread, so PDEATHSIG ties it to this process)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*PDEATH, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=cwd,
        )  # fmt: skip


def reap(procs: Iterable[subprocess.Popen], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal every live process, wait up to ``grace`` s in total, SIGKILL the rest."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def pause(seconds: float, every_s: Callable[[], None]) -> None:
    """Sleep ``seconds``, calling ``every_s`` once a second."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        every_s()
        time.sleep(min(1.0, left))


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Source clip and SRT sources
# --------------------------------------------------------------------------------------------


def ensure_clip(cache: Path) -> Path:
    """Encode the 6 Mbit/s 1080p30 clip once (about 15 s on 2 cores); reuse it afterwards."""
    clip = cache / f"srt-1080p30-6M-{CLIP_SECONDS}s.ts"
    if clip.exists():
        return clip
    cache.mkdir(parents=True, exist_ok=True)
    tmp = clip.with_suffix(".tmp.ts")
    say(f"encoding the source clip once into {clip} ...")
    argv = [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-t", str(CLIP_SECONDS), "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-b:v", "6M", "-maxrate", "6M", "-bufsize", "6M", "-x264-params", "nal-hrd=cbr",
        "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2",
        "-f", "mpegts", str(tmp),
    ]  # fmt: skip
    subprocess.run([*PDEATH, *argv], check=True, timeout=600)
    tmp.rename(clip)
    return clip


@dataclass
class Source:
    port: int
    log: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"srt://127.0.0.1:{self.port}"


@dataclass
class UdpSource(Source):
    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"


class Sources:
    """N SRT listener sources that keep serving: an FFmpeg SRT listener serves one client and
    exits when it leaves (or when the client fails at start), so :meth:`check` relaunches every
    exited one on its port (call it often)."""

    kind = "source"  # in log names and messages
    item: type[Source] = Source

    def __init__(self, n: int, clip: Path, logdir: Path) -> None:
        self.n, self.clip, self.logdir = n, clip, logdir
        self.items: list[Source] = []
        self.relaunches = 0

    def _target(self, port: int) -> str:
        """Where source ``port`` sends its stream."""
        return f"srt://127.0.0.1:{port}?mode=listener"

    def _spawn(self, port: int, log: Path) -> subprocess.Popen:
        argv = [
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-re", "-stream_loop", "-1", "-i", str(self.clip),
            "-c", "copy", "-f", "mpegts", self._target(port),
        ]  # fmt: skip
        return spawn(argv, log)

    def _wait_ready(self) -> None:
        """Until every listener listens (or has exited: then the caller raises)."""
        for s in self.items:
            wait_for(
                lambda s=s: port_in_use(s.port, "udp", pid=s.proc.pid) or s.proc.poll() is not None,
                timeout=20,
                what=f"{self.kind} on udp/{s.port}",
            )

    def start(self) -> Sources:
        self.logdir.mkdir(parents=True, exist_ok=True)
        used: set[int] = set()
        try:
            for i in range(self.n):
                port = free_udp_port(used)
                log = self.logdir / f"{self.kind}-{i:02d}.log"
                self.items.append(self.item(port, log, self._spawn(port, log)))
            self._wait_ready()
            for s in self.items:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} on port {s.port} exited: {tail(s.log)}")
        except BaseException:
            self.stop()
            raise
        return self

    def check(self) -> None:
        for s in self.items:
            if s.proc.poll() is not None:
                s.proc = self._spawn(s.port, s.log)
                self.relaunches += 1

    def stop(self) -> None:
        reap(s.proc for s in self.items)


class UdpSources(Sources):
    """N FFmpeg processes pushing MPEG-TS to ``udp://127.0.0.1:<port>``, where the job's FFmpeg
    listens. Much cheaper than SRT (no per-connection threads on either side): for benchmarks
    of the API, where the media only has to flow."""

    kind = "udp-source"
    item = UdpSource

    def _target(self, port: int) -> str:
        return f"udp://127.0.0.1:{port}?pkt_size=1316"

    def _wait_ready(self) -> None:
        time.sleep(1.0)  # nothing listens on our side; a sender that cannot start exits at once


def free_udp_port(used: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in used:
            used.add(port)
            return port


# --------------------------------------------------------------------------------------------
# Measurement window
# --------------------------------------------------------------------------------------------


@dataclass
class Tracked:
    role: str  # "ffmpeg" | "source" | "engine" | "bench"
    label: str
    pid: int
    cpu0: float | None = None
    cpu1: float | None = None
    rss: list[int] = field(default_factory=list)
    pss: int | None = None

    @property
    def alive_throughout(self) -> bool:
        return self.cpu0 is not None and self.cpu1 is not None

    def cpu_pct(self, wall: float) -> float | None:
        if not self.alive_throughout:
            return None
        return (self.cpu1 - self.cpu0) / wall * 100.0  # type: ignore[operator]

    @property
    def rss_mib(self) -> float | None:
        return statistics.fmean(self.rss) / MIB if self.rss else None


def run_window(
    tracked: list[Tracked],
    window: float,
    *,
    every_1s: Callable[[], None] | None = None,
    every_3s: Callable[[], None] | None = None,
    output_bytes: Callable[[], int],
) -> dict[str, Any]:
    """Sample ``tracked`` for ``window`` seconds; returns wall time, host CPU and output bytes."""
    host0, bytes0, everyone0 = host_cpu(), output_bytes(), all_cpu()
    for t in tracked:
        t.cpu0 = cpu_seconds(t.pid)
    t0 = time.monotonic()
    tick = 0
    while True:
        now = time.monotonic()
        if now - t0 >= window:
            break
        for t in tracked:
            r = rss_bytes(t.pid)
            if r is not None:
                t.rss.append(r)
        if every_1s is not None:
            every_1s()
        if every_3s is not None and tick % 3 == 0:
            every_3s()
        tick += 1
        time.sleep(max(0.0, t0 + tick - time.monotonic()))
    for t in tracked:
        t.cpu1 = cpu_seconds(t.pid)
    wall = time.monotonic() - t0
    host1, bytes1, everyone1 = host_cpu(), output_bytes(), all_cpu()
    ours = {t.pid for t in tracked}
    others = sum(c - everyone0.get(p, 0.0) for p, c in everyone1.items() if p not in ours)
    for t in tracked:
        t.pss = pss_bytes(t.pid)
    busy, total, irq = (host1[i] - host0[i] for i in range(3))
    ncpu = os.cpu_count() or 1
    return {
        "wall_s": wall,
        "host_irq_pct": irq / total * 100.0 * ncpu if total else None,  # of one core
        "other_procs_cpu_pct": others / wall * 100.0,
        "host_busy_pct": busy / total * 100.0 * ncpu if total else None,  # of one core
        "host_idle_pct": (1 - busy / total) * 100.0 if total else None,  # of the machine
        "output_bytes": bytes1 - bytes0,
    }


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarise(tracked: list[Tracked], win: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Flat metrics of one window."""
    wall = win["wall_s"]
    m: dict[str, Any] = {k: win[k] for k in ("wall_s", "host_busy_pct", "host_idle_pct",
                                             "host_irq_pct", "other_procs_cpu_pct")}  # fmt: skip
    by_role: dict[str, list[Tracked]] = {}
    for t in tracked:
        by_role.setdefault(t.role, []).append(t)

    ff = by_role.get("ffmpeg", [])
    ff_cpu = [c for t in ff if (c := t.cpu_pct(wall)) is not None]
    ff_rss = [r for t in ff if (r := t.rss_mib) is not None]
    ff_pss = [t.pss / MIB for t in ff if t.pss is not None]
    m["workers"] = len(ff)
    m["workers_exited"] = sum(not t.alive_throughout for t in ff)
    m["ffmpeg_cpu_pct_per_job"] = _mean(ff_cpu)
    m["ffmpeg_cpu_pct_per_job_max"] = max(ff_cpu) if ff_cpu else None
    m["ffmpeg_rss_mib_per_job"] = _mean(ff_rss)
    m["ffmpeg_pss_mib_per_job"] = _mean(ff_pss)
    m["ffmpeg_cpu_pct_total"] = sum(ff_cpu)
    m["ffmpeg_rss_mib_total"] = sum(ff_rss)

    # Load on the machine that is neither engine nor job: sources (always), receivers (if any).
    for role in ("source", "receiver"):
        grp = by_role.get(role, [])
        if not grp and role != "source":
            continue
        cpu = [c for t in grp if (c := t.cpu_pct(wall)) is not None]
        m[f"{role}s"] = len(grp)
        m[f"{role}s_exited"] = sum(not t.alive_throughout for t in grp)
        m[f"{role}s_cpu_pct_total"] = sum(cpu)
        m[f"{role}s_cpu_pct_per_{role}"] = _mean(cpu)
        m[f"{role}s_rss_mib_total"] = sum(r for t in grp if (r := t.rss_mib) is not None)

    eng = by_role.get("engine", [])
    if eng:
        cpu_total = rss_total = 0.0
        for t in eng:
            cpu, rss = t.cpu_pct(wall), t.rss_mib
            m[f"engine_{t.label}_cpu_pct"] = cpu
            m[f"engine_{t.label}_rss_mib"] = rss
            cpu_total += cpu or 0.0
            rss_total += rss or 0.0
        m["engine_cpu_pct_total"] = cpu_total
        m["engine_rss_mib_total"] = rss_total
        m["engine_cpu_pct_per_job"] = cpu_total / jobs if jobs else None
        m["engine_rss_mib_per_job"] = rss_total / jobs if jobs else None
        m["engine_target_met"] = cpu_total < TARGET_ENGINE_CPU_PCT

    for t in by_role.get("bench", []):
        m["bench_cpu_pct"] = t.cpu_pct(wall)
    m["our_cpu_pct"] = sum(c for t in tracked if (c := t.cpu_pct(wall)) is not None)
    if m["host_busy_pct"] is not None:
        rest = m["host_busy_pct"] - m["our_cpu_pct"] - m["host_irq_pct"]
        m["unattributed_cpu_pct"] = max(0.0, rest - m["other_procs_cpu_pct"])
    m["mbps_per_job"] = win["output_bytes"] * 8 / wall / 1e6 / max(1, jobs)
    return m


def dir_bytes(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def parse_us(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_speed(value: Any) -> float | None:
    try:
        return float(str(value).strip().rstrip("x"))
    except ValueError:
        return None


class Realtime:
    """Per job media time at the first and last poll of the window, and the speeds seen."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, int]] = {}
        self.last: dict[str, tuple[float, int]] = {}
        self.speeds: list[float] = []

    def seen(self, job: str, out_time_us: int | None, speed: float | None) -> None:
        now = time.monotonic()
        if out_time_us is not None:
            self.first.setdefault(job, (now, out_time_us))
            self.last[job] = (now, out_time_us)
        if speed is not None:
            self.speeds.append(speed)

    def metrics(self) -> dict[str, Any]:
        ratios = []
        for job, (t0, m0) in self.first.items():
            t1, m1 = self.last[job]
            if t1 - t0 > 1.0:
                ratios.append((m1 - m0) / 1e6 / (t1 - t0))
        return {
            "realtime_ratio_min": min(ratios) if ratios else None,
            "realtime_ratio_mean": _mean(ratios),
            "speed_min": min(self.speeds) if self.speeds else None,
        }


def last_progress(path: Path) -> dict[str, str]:
    """The last complete ``-progress`` block of a file."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    end = text.rfind("progress=")
    if end < 0:
        return {}
    start = text.rfind("progress=", 0, end)
    block = text[start:end] if start >= 0 else text[:end]
    out = {}
    for line in block.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------
# The engine: nats-server + FerretDB + the API + one worker service
# --------------------------------------------------------------------------------------------


class Api:
    def __init__(self, port: int, token: str, module: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.module = module  # "recording" | "restream": /api/<module>/...
        self.latencies: list[float] = []

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        req.add_header("x-access-token", self.token)
        req.add_header("content-type", "application/json")
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (our own API)
            payload = json.loads(resp.read() or b"null")
        self.latencies.append(time.monotonic() - t0)
        return payload

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/api/health", timeout=5) as r:  # noqa: S310
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def rows(self) -> dict[str, dict[str, Any]]:
        """``getStat`` as a dashboard polls it: whole rows by job id."""
        rows = self.call("POST", f"/api/{self.module}/getStat", {})
        return {r["processData"]["id"]: r for r in rows}

    def stats(self) -> dict[str, dict[str, Any]]:
        """``getStat``'s ``processData`` by job id."""
        return {j: r["processData"] for j, r in self.rows().items()}


class Engine:
    """nats-server, FerretDB, the API and ONE ``worker`` service (``python -m reelhouse.<worker>``)
    for ``jobs`` jobs of ``module``; the measurement of its processes and the stop of its jobs."""

    def __init__(
        self,
        work: Path,
        worker: str,
        module: str,
        jobs: int,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.work, self.worker, self.module, self.jobs = work, worker, module, jobs
        self.env_extra = dict(env_extra or {})  # more REELHOUSE_* settings for every service
        self.env: dict[str, str] = {}
        self.nats = infra.nats_server(work / "nats")
        self.fdb = infra.ferretdb(work / "ferretdb")
        for srv in (self.nats, self.fdb):
            srv.argv = [*PDEATH, *srv.argv]
        self.services: dict[str, subprocess.Popen] = {}
        self.logs = {name: work / f"{name}.log" for name in ("api", worker)}
        self.storage = work / "storage"
        self.api: Api | None = None
        self.job_ids: list[str] = []

    def start(self) -> Api:
        say("engine: starting nats-server and FerretDB")
        self.nats.start()
        self.fdb.start()
        token = secrets.token_hex(16)
        api_port = infra.free_port()
        env = {
            **os.environ,
            "REELHOUSE_NATS_URL": f"nats://127.0.0.1:{self.nats.port}",
            "REELHOUSE_MONGODB_URL": f"mongodb://127.0.0.1:{self.fdb.port}/",
            "REELHOUSE_MONGODB_DATABASE": "bench_density",
            "REELHOUSE_STORAGE_ROOT": str(self.storage),
            "REELHOUSE_BOOTSTRAP_TOKEN": token,
            "REELHOUSE_BOOTSTRAP_TOKEN_FILE": str(self.work / "bootstrap-token"),
            "REELHOUSE_API_HOST": "127.0.0.1",
            "REELHOUSE_API_PORT": str(api_port),
            "REELHOUSE_LOG_FORMAT": "json",
            "REELHOUSE_MAX_JOBS": str(max(self.jobs, 1)),
            # The sources listen on loopback, which the engine refuses to reach on a user's
            # behalf unless allowed (as `make up` and the test suite allow it).
            "REELHOUSE_PROBE_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
            **self.env_extra,
        }
        self.env = env
        say(f"engine: starting the API and one {self.worker}")
        for name in ("api", self.worker):
            self.services[name] = spawn(
                [sys.executable, "-m", f"reelhouse.{name}"], self.logs[name], env
            )
        api = self.api = Api(api_port, token, self.module)

        def up() -> bool:
            for name, p in self.services.items():
                if p.poll() is not None:
                    log = tail(self.logs[name])
                    raise RuntimeError(
                        f"{name} exited rc={p.returncode} at start; log tail:\n{log}"
                    )
            return api.healthy()

        try:
            wait_for(up, timeout=60, what="GET /api/health = 200", interval=0.5)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; api log tail:\n{tail(self.logs['api'], 15)}") from None
        return api

    def add_worker(self, name: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one more ``worker`` service (same settings as the first, plus ``env_extra``),
        kept in ``services[name]`` and stopped by :meth:`teardown`."""
        self.logs[name] = self.work / f"{name}.log"
        proc = spawn([sys.executable, "-m", f"reelhouse.{self.worker}"], self.logs[name],
                     {**self.env, **(env_extra or {})})  # fmt: skip
        self.services[name] = proc
        return proc

    def add_service(self, name: str, env_extra: dict[str, str] | None = None,
                    key: str | None = None) -> subprocess.Popen:  # fmt: skip
        """Start one more engine service ``python -m reelhouse.<name>`` (same settings as the
        others, plus ``env_extra``), kept in ``services[key or name]`` and stopped by
        :meth:`teardown` (e.g. the ingest service, or a recorder next to the ingest worker)."""
        key = key or name
        self.logs[key] = self.work / f"{key}.log"
        proc = spawn([sys.executable, "-m", f"reelhouse.{name}"], self.logs[key],
                     {**self.env, **(env_extra or {})})  # fmt: skip
        self.services[key] = proc
        return proc

    def mongo(self) -> Any:
        """The engine's database through pymongo (for what the API does not show)."""
        import pymongo

        client = pymongo.MongoClient(
            self.env["REELHOUSE_MONGODB_URL"], tz_aware=True, serverSelectionTimeoutMS=5000
        )
        return client[self.env["REELHOUSE_MONGODB_DATABASE"]]

    def service_pids(self) -> dict[str, int]:
        """Every engine process by name: the services started here, nats-server, ferretdb."""
        pids = {name: p.pid for name, p in self.services.items() if p.poll() is None}
        pids["nats-server"] = self.nats.proc.pid  # type: ignore[union-attr]
        pids["ferretdb"] = self.fdb.proc.pid  # type: ignore[union-attr]
        return pids

    def create(self, body: dict[str, Any]) -> str:
        assert self.api is not None
        job_id = self.api.call("POST", f"/api/{self.module}/create", body)["id"]
        self.job_ids.append(job_id)
        return job_id

    @property
    def worker_pid(self) -> int:
        return self.services[self.worker].pid

    def check_worker(self) -> None:
        if self.services[self.worker].poll() is not None:
            raise RuntimeError(f"{self.worker} exited; log tail:\n{tail(self.logs[self.worker])}")

    def dataplane_pid(self) -> int | None:
        """The ingest service's data plane process, once it runs (None without an ingest
        service); raises if the ingest service exited."""
        ingest = self.services.get("ingest")
        if ingest is None:
            return None
        if ingest.poll() is not None:
            raise RuntimeError(f"ingest exited; log tail:\n{tail(self.logs['ingest'])}")
        found = children(ingest.pid, DATAPLANE.name[:15])  # comm: the name cut to 15 characters
        return found[0] if found else None

    def ffmpeg(self) -> list[int]:
        """The worker's FFmpeg children."""
        return children(self.worker_pid, "ffmpeg")

    def record_all(self, sources: Sources, name: str, *, batch: int | None = None) -> list[str]:
        """One recording (:func:`recording_job`) per source, created through the API; returns
        their ids once every one reports progress in getStat (checked after each ``batch``
        creates, or once after all of them)."""
        ids = self.job_ids

        def running(rows: dict[str, dict[str, Any]]) -> bool:
            sources.check()
            return all(parse_us(rows.get(j, {}).get("processData", {}).get("out_time_ms"))
                       for j in ids)  # fmt: skip

        n = len(sources.items)
        for i, s in enumerate(sources.items):
            self.create(recording_job(i, s.url, name=name))
            if batch and len(ids) % batch == 0 and len(ids) < n:
                self.wait_all(running, f"{len(ids)} jobs to report progress")
        self.wait_all(running, f"{len(ids)} jobs to report progress")
        return list(ids)

    def wait_all(self, ready: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> None:
        """Wait until ``ready(getStat rows)`` holds for the worker's ``jobs`` jobs."""
        assert self.api is not None
        api = self.api

        def check() -> bool:
            self.check_worker()
            return ready(api.rows())

        try:
            wait_for(check, timeout=60 + 2 * self.jobs, what=what, interval=1)
        except TimeoutError as exc:
            raise RuntimeError(
                f"{exc} ({len(api.rows())} in getStat, {len(self.ffmpeg())} ffmpeg children); "
                f"{self.worker} log tail:\n{tail(self.logs[self.worker])}"
            ) from None

    def track(self) -> tuple[list[int], list[Tracked]]:
        """Start of the window: the worker's FFmpeg, and the engine's own processes to track."""
        self._workers = self.ffmpeg()
        self._pids = {
            self.worker: self.worker_pid, "api": self.services["api"].pid,
            "nats-server": self.nats.proc.pid, "ferretdb": self.fdb.proc.pid,  # type: ignore[union-attr]
        }  # fmt: skip
        self._others = {name: children(pid) for name, pid in self._pids.items()}
        if self.api is not None:
            self.api.latencies.clear()
        return self._workers, [Tracked("engine", name, pid) for name, pid in self._pids.items()]

    def window_metrics(self) -> dict[str, Any]:
        """End of the window: getStat latency, replaced workers, uncounted children, command."""
        lat = self.api.latencies if self.api is not None else []
        workers = self._workers
        return {
            "getstat_ms_mean": _mean([x * 1000 for x in lat]),
            "getstat_ms_max": max(lat) * 1000 if lat else None,
            "workers_replaced": len(set(workers) ^ set(self.ffmpeg())),
            "engine_children_not_ffmpeg": {
                k: [(p, (proc_stat(p) or ("?",))[0]) for p in v if p not in workers]
                for k, v in self._others.items()
                if [p for p in v if p not in workers]
            },
            "command": " ".join(cmdline(workers[0])) if workers else None,
        }

    def stop_jobs(self, m: dict[str, Any]) -> None:
        """``/stop`` every job; time until no FFmpeg child of the worker remains (60 s at most)."""
        api, services = self.api, self.services
        if api is None or not self.job_ids or not services.get("api"):
            return
        if services["api"].poll() is not None:
            return
        say("engine: stopping the jobs")
        t0 = time.monotonic()
        for j in self.job_ids:
            with contextlib.suppress(OSError, urllib.error.HTTPError):
                api.call("POST", f"/api/{self.module}/stop", {"id": j})
        m["stop_calls_s"] = time.monotonic() - t0
        proc = services.get(self.worker)
        if proc is not None and proc.poll() is None:
            try:
                wait_for(
                    lambda: not children(proc.pid, "ffmpeg"),
                    timeout=60,
                    what=f"the {self.worker}'s ffmpeg processes to end",
                    interval=0.5,
                )
                m["stop_all_s"] = time.monotonic() - t0
            except TimeoutError:
                left = len(children(proc.pid, "ffmpeg"))
                m["stop_all_s"] = None
                m["stop_problem"] = f"{left} ffmpeg still running 60 s after the stops"
                say(f"engine: {m['stop_problem']}")

    def teardown(self) -> None:
        say("engine: tearing down")
        extra = [p for k, p in self.services.items() if k not in (self.worker, "api")]
        reap([*extra, *(self.services[k] for k in (self.worker, "api") if k in self.services)],
             grace=25)  # fmt: skip
        for srv in (self.fdb, self.nats):
            with contextlib.suppress(Exception):
                srv.stop()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ver = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, check=False)
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "ffmpeg": ver.stdout.split("\n", 1)[0],
        "python": platform.python_version(),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (and min, max) of every numeric metric over the repeated runs."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if nums and len(nums) == len(values):
            out[key] = {"median": statistics.median(nums), "min": min(nums), "max": max(nums)}
        else:
            out[key] = values[-1]
    return out


def median(value: Any) -> Any:
    """The median of an aggregated metric, or the value of a single run."""
    return value["median"] if isinstance(value, dict) and "median" in value else value


def fmt(value: Any, pattern: str) -> str:
    if isinstance(value, dict):
        med = pattern.format(value["median"])
        if value["min"] == value["max"]:
            return med
        return f"{med} [{pattern.format(value['min'])}-{pattern.format(value['max'])}]"
    if value is None:
        return "-"
    return pattern.format(value)


def table(results: dict[str, dict[str, Any]], rows_spec: list[tuple[str, str, str]]) -> str:
    phases = list(results)
    rows = [("metric", *phases)]
    for label, key, pattern in rows_spec:
        if any(key in results[p] for p in phases):
            rows.append((label, *(fmt(results[p].get(key), pattern) for p in phases)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line: repeated runs of each phase, report
# --------------------------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, Path, Path], dict[str, Any]]


def parser(
    description: str,
    default_jobs: int,
    what: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The benchmarks' common options (``extra`` adds its own after ``--phase``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--jobs", type=int, default=default_jobs,
                   help=f"concurrent {what} (default {default_jobs})")  # fmt: skip
    p.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up once all run, s")
    p.add_argument("--phase", choices=("bare", "engine", "both"), default="both")
    if extra is not None:
        extra(p)
    p.add_argument("--repeat", type=int, default=1, help="runs per phase (median, min-max)")
    add_output_args(p)
    return p


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--json``, ``--cache-dir`` and ``--keep``: every benchmark has them."""
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the clip is kept")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, files)")


def run_main(
    args: argparse.Namespace,
    *,
    script: str,
    title: str,
    runners: dict[str, Runner],
    rows: list[tuple[str, str, str]],
    info_extra: dict[str, Any] | None = None,
    footer: Callable[[dict[str, dict[str, Any]]], list[str]] | None = None,
) -> int:
    """Run every phase ``args.repeat`` times (each run in its own directory), print the report
    (title, machine line, table, commands, ``footer`` lines, errors), write ``--json``. The
    phases are ``args.variants`` (a list of ``runners`` keys) when the script has that option
    and it is set, else ``--phase``. Each run records the 1-minute load it started with."""
    clip = ensure_clip(args.cache_dir)
    phases = getattr(args, "variants", None) or (
        ["bare", "engine"] if args.phase == "both" else [args.phase]
    )
    runs: dict[str, list[dict[str, Any]]] = {ph: [] for ph in phases}
    errors: dict[str, str] = {}
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-density-"))
    say(f"work directory {work}")
    try:
        for r in range(args.repeat):
            for ph in phases:
                d = work / f"{ph}-{r}"
                d.mkdir()
                load = loadavg()
                say(f"{ph} run {r}: 1-min load {load:.2f}")
                try:
                    runs[ph].append({**runners[ph](args, clip, d), "load_1min_start": load})
                except Exception as exc:
                    errors[f"{ph}-{r}"] = f"{type(exc).__name__}: {exc}"
                    say(f"{ph} run {r} FAILED: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    results = {ph: aggregate(rs) if len(rs) > 1 else rs[0] for ph, rs in runs.items() if rs}
    info = {
        "date": started.isoformat(timespec="seconds"),
        "command": f"uv run python bench/{script} " + " ".join(sys.argv[1:]),
        "jobs": args.jobs, **(info_extra or {}), "window_s": args.window,
        "warmup_s": args.warmup, "repeat": args.repeat, "machine": machine(), "clip": clip.name,
    }  # fmt: skip
    print(f"\n{title}")
    m = info["machine"]
    print(f"{info['date']}  {m['nproc']} x {m['cpu_model']}, {m['mem_gib']} GiB, {m['ffmpeg']}\n")
    if results:
        print(table(results, rows))
    for ph, res in results.items():
        print(f"\n{ph} FFmpeg command: {res.get('command')}")
        if res.get("stop_problem"):
            print(f"{ph}: {res['stop_problem']}")
        extra = res.get("engine_children_not_ffmpeg")
        if extra:
            print(f"{ph}: other children of engine processes (not counted): {extra}")
    for line in footer(results) if footer is not None else []:
        print(f"\n{line}")
    for key, err in errors.items():
        print(f"\n{key} FAILED:\n{err}")
    if args.json:
        args.json.write_text(json.dumps({**info, "results": results, "runs": runs,
                                         "errors": errors}, indent=2, default=str))  # fmt: skip
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------
# Shared by the latency, failover, API-load and soak benchmarks
# --------------------------------------------------------------------------------------------

SMALL_CLIP_KBPS = 150


def ensure_small_clip(cache: Path) -> Path:
    """A cheap source for many jobs: 30 s of 320x180 15 fps H.264 at ~150 kbit/s CBR (keyframe
    every second) + AAC 32k mono, MPEG-TS; encoded once (a few seconds), reused afterwards."""
    clip = cache / f"srt-180p15-{SMALL_CLIP_KBPS}k-{CLIP_SECONDS}s.ts"
    if clip.exists():
        return clip
    cache.mkdir(parents=True, exist_ok=True)
    tmp = clip.with_suffix(".tmp.ts")
    say(f"encoding the small source clip once into {clip} ...")
    k = SMALL_CLIP_KBPS
    argv = [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-t", str(CLIP_SECONDS), "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-b:v", f"{k}k", "-maxrate", f"{k}k", "-bufsize", f"{k}k", "-x264-params", "nal-hrd=cbr",
        "-g", "15", "-keyint_min", "15", "-sc_threshold", "0",
        "-c:a", "aac", "-b:a", "32k", "-ac", "1",
        "-f", "mpegts", str(tmp),
    ]  # fmt: skip
    subprocess.run([*PDEATH, *argv], check=True, timeout=600)
    tmp.rename(clip)
    return clip


def source_ready(s: Source) -> bool:
    """Whether an SRT listener source is up and listening (reads /proc, never connects)."""
    return s.proc.poll() is None and port_in_use(s.port, "udp", pid=s.proc.pid)


def percentile(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not xs:
        return None
    ys = sorted(xs)
    pos = (len(ys) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (pos - lo)


def distribution(xs: list[float], prefix: str) -> dict[str, Any]:
    """n, mean, p50, p95, p99, min and max of ``xs`` as flat ``<prefix>_<stat>`` metrics."""
    return {
        f"{prefix}_n": len(xs),
        f"{prefix}_mean": _mean(xs),
        f"{prefix}_p50": percentile(xs, 50),
        f"{prefix}_p95": percentile(xs, 95),
        f"{prefix}_p99": percentile(xs, 99),
        f"{prefix}_min": min(xs) if xs else None,
        f"{prefix}_max": max(xs) if xs else None,
    }


def loadavg() -> float:
    """The host's 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(limit: float = 1.5, max_wait: float = 300.0) -> float:
    """Before a measured run: wait (up to ``max_wait`` s) until the 1-minute load is at most
    ``limit`` (other engineers share the machine); returns the load the run starts with.
    ``BENCH_MAX_LOAD`` and ``BENCH_MAX_WAIT`` in the environment override the two."""
    limit = float(os.environ.get("BENCH_MAX_LOAD", limit))
    max_wait = float(os.environ.get("BENCH_MAX_WAIT", max_wait))
    deadline = time.monotonic() + max_wait
    load = loadavg()
    while load > limit and time.monotonic() < deadline:
        say(f"1-min load {load:.2f} > {limit:g}: waiting for the machine to calm down")
        time.sleep(15)
        load = loadavg()
    return load


class StatsWatcher:
    """Subscribes (in a thread of its own) to ``<prefix>.stats.<module>.*`` and keeps, per job id,
    the monotonic time of its first and last stats message and how many arrived."""

    def __init__(self, nats_url: str, module: str, prefix: str = "reelhouse") -> None:
        import threading

        self.url, self.subject = nats_url, f"{prefix}.stats.{module}.*"
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self._ready = threading.Event()
        self._stop: Any = None
        self._loop: Any = None
        self._thread = threading.Thread(target=self._run, name="stats-watcher", daemon=True)

    def start(self) -> StatsWatcher:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"could not subscribe to {self.subject}")
        return self

    def _run(self) -> None:
        import asyncio

        import nats

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            nc = await nats.connect(self.url)

            async def seen(msg: Any) -> None:
                now = time.monotonic()
                job = msg.subject.rsplit(".", 1)[-1]
                self.first.setdefault(job, now)
                self.last[job] = now
                self.count[job] = self.count.get(job, 0) + 1

            await nc.subscribe(self.subject, cb=seen)
            await nc.flush()
            self._ready.set()
            await self._stop.wait()
            await nc.close()

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)


def first_file_bytes(folder: Path) -> int:
    """Bytes of the largest non-hidden file in ``folder`` (0 if none yet)."""
    best = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(".") and entry.is_file():
                best = max(best, entry.stat().st_size)
    return best


def recording_job(i: int, url: str, *, name: str = "bench", active: bool = True) -> dict[str, Any]:
    """The seed's mp4 archive recording (``recording_payload(0)``) of ``url``, audio copied."""
    from support.seeds import recording_payload

    body = recording_payload(0)
    body["recording_name"] = f"{name} {i:04d}"
    body["input"]["input_stream_url"] = url
    if url.startswith("udp://"):
        body["input"]["input_type"] = "INPUT_TYPE_UDP_URL"
    body["input"]["entity_name"] = body["recording_name"]
    body["transcoding"]["audio_transcoding"] = "Disabled"
    body["active"] = active
    return body


def header(title: str, started: dt.datetime, load: float | None = None) -> dict[str, Any]:
    """Print the report's title and machine line; returns the machine description."""
    m = machine()
    print(f"\n{title}")
    extra = f", 1-min load at start {load:.2f}" if load is not None else ""
    print(
        f"{started.isoformat(timespec='seconds')}  {m['nproc']} x {m['cpu_model']}, "
        f"{m['mem_gib']} GiB, {m['ffmpeg']}{extra}\n"
    )
    return m


def save_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str))
        say(f"results written to {path}")
