"""Recording density: N concurrent stream-copy recordings of a 6 Mbps 1080p30 SRT source.

Two phases, each with its own fresh set of N SRT sources:

* ``bare``:   N plain ``ffmpeg -i srt://... -c copy -f mp4`` processes started by this script;
* ``engine``: nats-server + FerretDB + the API + ONE recorder, N recording jobs created through
  ``POST /api/recording/create`` (stream copy, audio copy), ``getStat`` polled every 3 s as a
  dashboard does.

For each phase it samples, over a measurement window after a warm-up, CPU (utime+stime from
/proc/<pid>/stat; 100 % = one core) and RSS (/proc/<pid>/statm, averaged over 1 s samples) of the
recording FFmpeg processes (per job), of the engine's own processes (recorder, API, nats-server,
FerretDB) and of the sources (load on the machine, but neither engine nor recording), plus the
host's CPU use, whether the recordings keep up with real time, and the write rate per job.

The source clip (30 s of 1920x1080 30 fps testsrc2 + 1 kHz sine, H.264 6 Mbit/s CBR with a
keyframe every second + AAC 128k, MPEG-TS) is encoded once into a cache directory; each source is
``ffmpeg -re -stream_loop -1 -i clip.ts -c copy -f mpegts srt://127.0.0.1:<port>?mode=listener``
(an FFmpeg SRT listener serves one client, hence one source per job).

    uv run python bench/recording_density.py --jobs 40 --window 30 --warmup 10 \\
        [--phase bare|engine|both] [--repeat 1] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
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
from support.seeds import recording_payload  # noqa: E402

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
PDEATH = _pdeathsig_prefix()
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reelhouse/bench"
CLIP_SECONDS = 30
ENGINE_NAMES = ("recorder", "api", "nats-server", "ferretdb")
TARGET_ENGINE_CPU_PCT = 10.0


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


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` (from the main thread, so PDEATHSIG ties it to this process)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*PDEATH, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env,
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


class Sources:
    """N SRT listener sources that keep serving: an FFmpeg SRT listener serves one client and
    exits when it leaves (or when the client fails at start), so :meth:`check` relaunches every
    exited one on its port (call it often)."""

    def __init__(self, n: int, clip: Path, logdir: Path) -> None:
        self.n, self.clip, self.logdir = n, clip, logdir
        self.items: list[Source] = []
        self.relaunches = 0

    def _spawn(self, port: int, log: Path) -> subprocess.Popen:
        argv = [
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-re", "-stream_loop", "-1", "-i", str(self.clip),
            "-c", "copy", "-f", "mpegts", f"srt://127.0.0.1:{port}?mode=listener",
        ]  # fmt: skip
        return spawn(argv, log)

    def start(self) -> Sources:
        self.logdir.mkdir(parents=True, exist_ok=True)
        used: set[int] = set()
        try:
            for i in range(self.n):
                port = free_udp_port(used)
                log = self.logdir / f"source-{i:02d}.log"
                self.items.append(Source(port, log, self._spawn(port, log)))
            for s in self.items:
                wait_for(
                    lambda s=s: (
                        port_in_use(s.port, "udp", pid=s.proc.pid) or s.proc.poll() is not None
                    ),
                    timeout=20,
                    what=f"source on udp/{s.port}",
                )
                if s.proc.poll() is not None:
                    raise RuntimeError(f"source on port {s.port} exited: {tail(s.log)}")
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

    src = by_role.get("source", [])
    src_cpu = [c for t in src if (c := t.cpu_pct(wall)) is not None]
    m["sources"] = len(src)
    m["sources_exited"] = sum(not t.alive_throughout for t in src)
    m["sources_cpu_pct_total"] = sum(src_cpu)
    m["sources_cpu_pct_per_source"] = _mean(src_cpu)
    m["sources_rss_mib_total"] = sum(r for t in src if (r := t.rss_mib) is not None)

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


# --------------------------------------------------------------------------------------------
# Phase A: bare FFmpeg
# --------------------------------------------------------------------------------------------


def bare_argv(url: str, outdir: Path, audio: str = "copy") -> list[str]:
    """``ffmpeg -i srt://... -c copy -f mp4 -movflags +frag_keyframe+empty_moov out.mp4`` plus
    ``-bsf:a aac_adtstoasc`` (FFmpeg 5.1 refuses ADTS AAC from MPEG-TS into ``+empty_moov`` MP4
    without it: "Malformed AAC bitstream detected") and ``-progress`` to a file (for speed and
    real time; the engine's FFmpeg reports progress too). ``audio="aac"`` re-encodes the audio
    the way the engine does with the seed's ``audio_transcoding: "aac"``."""
    codecs = ["-c", "copy", "-bsf:a", "aac_adtstoasc"]
    if audio == "aac":
        codecs = ["-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-ar", "44100"]
    return [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
        "-progress", str(outdir / "progress.txt"), "-y", "-i", url, *codecs,
        "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov", str(outdir / "out.mp4"),
    ]  # fmt: skip


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


def run_bare(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.jobs
    say(f"bare: starting {n} sources")
    sources = Sources(n, clip, work / "sources").start()
    recs: list[subprocess.Popen] = []
    dirs: list[Path] = []
    try:
        say(f"bare: starting {n} ffmpeg recorders")
        for i, s in enumerate(sources.items):
            d = work / f"job{i:02d}"
            d.mkdir(parents=True)
            dirs.append(d)
            recs.append(spawn(bare_argv(s.url, d, args.audio), d / "ffmpeg.log"))

        def all_recording() -> bool:
            dead = [d for d, p in zip(dirs, recs, strict=True) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"bare ffmpeg exited at start: {tail(dead[0] / 'ffmpeg.log')}")
            return all(parse_us(last_progress(d / "progress.txt").get("out_time_us")) for d in dirs)

        wait_for(all_recording, timeout=30 + n, what=f"{n} bare recordings to make progress")
        say(f"bare: all {n} recording; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        relaunches = sources.relaunches

        tracked = [Tracked("ffmpeg", f"job{i}", p.pid) for i, p in enumerate(recs)]
        tracked += [Tracked("source", f"src{i}", s.proc.pid) for i, s in enumerate(sources.items)]
        tracked.append(Tracked("bench", "bench", os.getpid()))
        rt = Realtime()

        def poll() -> None:
            for i, d in enumerate(dirs):
                block = last_progress(d / "progress.txt")
                rt.seen(str(i), parse_us(block.get("out_time_us")), parse_speed(block.get("speed")))

        say(f"bare: measuring for {args.window:g} s")
        win = run_window(
            tracked, args.window, every_1s=sources.check, every_3s=poll,
            output_bytes=lambda: sum((d / "out.mp4").stat().st_size for d in dirs),
        )  # fmt: skip
        poll()
        m = summarise(tracked, win, n)
        m.update(rt.metrics())
        m["source_relaunches"] = sources.relaunches - relaunches
        m["command"] = " ".join(bare_argv("srt://127.0.0.1:<port>", Path("<dir>"), args.audio))
        return m
    finally:
        reap(recs, signal.SIGINT, grace=15)
        sources.stop()


# --------------------------------------------------------------------------------------------
# Phase B: the engine
# --------------------------------------------------------------------------------------------


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
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

    def stats(self) -> dict[str, dict[str, Any]]:
        rows = self.call("POST", "/api/recording/getStat", {})
        return {r["processData"]["id"]: r["processData"] for r in rows}


def job_payload(i: int, url: str, audio: str = "copy") -> dict[str, Any]:
    body = recording_payload(0)
    body["recording_name"] = f"density {i:02d}"
    body["input"]["input_stream_url"] = url
    body["input"]["entity_name"] = body["recording_name"]
    body["transcoding"]["audio_transcoding"] = "Disabled" if audio == "copy" else "aac"
    body["active"] = True
    return body


def run_engine(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.jobs
    nats = infra.nats_server(work / "nats")
    fdb = infra.ferretdb(work / "ferretdb")
    for srv in (nats, fdb):
        srv.argv = [*PDEATH, *srv.argv]
    services: dict[str, subprocess.Popen] = {}
    sources = Sources(n, clip, work / "sources")
    logs = {name: work / f"{name}.log" for name in ("api", "recorder")}
    api: Api | None = None
    job_ids: list[str] = []
    m: dict[str, Any] = {}  # filled by the window, completed by the stop in ``finally``
    try:
        say("engine: starting nats-server and FerretDB")
        nats.start()
        fdb.start()
        token = secrets.token_hex(16)
        api_port = infra.free_port()
        storage = work / "storage"
        env = {
            **os.environ,
            "REELHOUSE_NATS_URL": f"nats://127.0.0.1:{nats.port}",
            "REELHOUSE_MONGODB_URL": f"mongodb://127.0.0.1:{fdb.port}/",
            "REELHOUSE_MONGODB_DATABASE": "bench_density",
            "REELHOUSE_STORAGE_ROOT": str(storage),
            "REELHOUSE_BOOTSTRAP_TOKEN": token,
            "REELHOUSE_BOOTSTRAP_TOKEN_FILE": str(work / "bootstrap-token"),
            "REELHOUSE_API_HOST": "127.0.0.1",
            "REELHOUSE_API_PORT": str(api_port),
            "REELHOUSE_LOG_FORMAT": "json",
            "REELHOUSE_MAX_JOBS": str(max(n, 1)),
        }
        say("engine: starting the API and one recorder")
        for name in ("api", "recorder"):
            services[name] = spawn([sys.executable, "-m", f"reelhouse.{name}"], logs[name], env)
        api = Api(api_port, token)

        def up() -> bool:
            for name, p in services.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited rc={p.returncode} at start; log tail:\n{tail(logs[name])}"
                    )
            return api.healthy()  # type: ignore[union-attr]

        wait_for(up, timeout=60, what="GET /api/health = 200", interval=0.5)

        say(f"engine: starting {n} sources")
        sources.start()
        say(f"engine: creating {n} recording jobs")
        for i, s in enumerate(sources.items):
            job_ids.append(
                api.call("POST", "/api/recording/create", job_payload(i, s.url, args.audio))["id"]
            )

        def all_running() -> bool:
            sources.check()
            if services["recorder"].poll() is not None:
                raise RuntimeError(f"recorder exited; log tail:\n{tail(logs['recorder'])}")
            stats = api.stats()  # type: ignore[union-attr]
            return sum(1 for j in job_ids if parse_us(stats.get(j, {}).get("out_time_ms"))) == n

        try:
            wait_for(all_running, timeout=60 + 2 * n, what=f"getStat to show {n} jobs", interval=1)
        except TimeoutError as exc:
            workers = children(services["recorder"].pid, "ffmpeg")
            raise RuntimeError(
                f"{exc} ({len(api.stats())} in getStat, {len(workers)} ffmpeg children); "
                f"recorder log tail:\n{tail(logs['recorder'])}"
            ) from None
        say(f"engine: all {n} jobs in getStat; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        relaunches = sources.relaunches

        rec_pid = services["recorder"].pid
        workers = children(rec_pid, "ffmpeg")
        tracked = [Tracked("ffmpeg", f"w{pid}", pid) for pid in workers]
        tracked += [Tracked("source", f"src{i}", s.proc.pid) for i, s in enumerate(sources.items)]
        engine_pids = {"recorder": rec_pid, "api": services["api"].pid,
                       "nats-server": nats.proc.pid, "ferretdb": fdb.proc.pid}  # type: ignore[union-attr]  # fmt: skip
        tracked += [Tracked("engine", name, pid) for name, pid in engine_pids.items()]
        tracked.append(Tracked("bench", "bench", os.getpid()))
        others = {name: children(pid) for name, pid in engine_pids.items()}
        rt = Realtime()
        api.latencies.clear()

        def poll() -> None:
            stats = api.stats()  # type: ignore[union-attr]
            for j in job_ids:
                row = stats.get(j)
                if row:
                    rt.seen(j, parse_us(row.get("out_time_ms")), parse_speed(row.get("speed")))

        say(f"engine: measuring for {args.window:g} s ({len(workers)} ffmpeg workers)")
        win = run_window(
            tracked, args.window, every_1s=sources.check, every_3s=poll,
            output_bytes=lambda: dir_bytes(storage),
        )  # fmt: skip
        m.update(summarise(tracked, win, n))
        m.update(rt.metrics())
        m["source_relaunches"] = sources.relaunches - relaunches
        m["getstat_ms_mean"] = _mean([x * 1000 for x in api.latencies])
        m["getstat_ms_max"] = max(api.latencies) * 1000 if api.latencies else None
        m["workers_replaced"] = len(set(workers) ^ set(children(rec_pid, "ffmpeg")))
        m["engine_children_not_ffmpeg"] = {
            k: [(p, (proc_stat(p) or ("?",))[0]) for p in v if p not in workers]
            for k, v in others.items()
            if [p for p in v if p not in workers]
        }
        m["command"] = " ".join(cmdline(workers[0])) if workers else None
        return m
    finally:
        if api is not None and job_ids and services.get("api") and services["api"].poll() is None:
            say("engine: stopping the jobs")
            t0 = time.monotonic()
            for j in job_ids:
                with contextlib.suppress(OSError, urllib.error.HTTPError):
                    api.call("POST", "/api/recording/stop", {"id": j})
            m["stop_calls_s"] = time.monotonic() - t0
            rec = services.get("recorder")
            if rec is not None and rec.poll() is None:
                try:
                    wait_for(
                        lambda: not children(rec.pid, "ffmpeg"),
                        timeout=60,
                        what="the recorder's ffmpeg processes to end",
                        interval=0.5,
                    )
                    m["stop_all_s"] = time.monotonic() - t0
                except TimeoutError:
                    left = len(children(rec.pid, "ffmpeg"))
                    m["stop_all_s"] = None
                    m["stop_problem"] = f"{left} ffmpeg still running 60 s after the stops"
                    say(f"engine: {m['stop_problem']}")
        say("engine: tearing down")
        reap([services[k] for k in ("recorder", "api") if k in services], grace=25)
        for srv in (fdb, nats):
            with contextlib.suppress(Exception):
                srv.stop()
        sources.stop()


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


ROWS: list[tuple[str, str, str]] = [
    # (label, metric key, format)
    ("recording ffmpeg processes", "workers", "{:.0f}"),
    ("  exited/replaced during window", "workers_exited", "{:.0f}"),
    ("FFmpeg CPU % per job (mean)", "ffmpeg_cpu_pct_per_job", "{:.2f}"),
    ("FFmpeg CPU % per job (max)", "ffmpeg_cpu_pct_per_job_max", "{:.2f}"),
    ("FFmpeg RSS MiB per job", "ffmpeg_rss_mib_per_job", "{:.1f}"),
    ("FFmpeg PSS MiB per job", "ffmpeg_pss_mib_per_job", "{:.1f}"),
    ("FFmpeg CPU % total", "ffmpeg_cpu_pct_total", "{:.1f}"),
    ("FFmpeg RSS MiB total", "ffmpeg_rss_mib_total", "{:.0f}"),
    ("engine: recorder CPU %", "engine_recorder_cpu_pct", "{:.2f}"),
    ("engine: recorder RSS MiB", "engine_recorder_rss_mib", "{:.1f}"),
    ("engine: api CPU %", "engine_api_cpu_pct", "{:.2f}"),
    ("engine: api RSS MiB", "engine_api_rss_mib", "{:.1f}"),
    ("engine: nats-server CPU %", "engine_nats-server_cpu_pct", "{:.2f}"),
    ("engine: nats-server RSS MiB", "engine_nats-server_rss_mib", "{:.1f}"),
    ("engine: ferretdb CPU %", "engine_ferretdb_cpu_pct", "{:.2f}"),
    ("engine: ferretdb RSS MiB", "engine_ferretdb_rss_mib", "{:.1f}"),
    ("engine total CPU % (target < 10)", "engine_cpu_pct_total", "{:.2f}"),
    ("engine total RSS MiB", "engine_rss_mib_total", "{:.0f}"),
    ("engine CPU % per job", "engine_cpu_pct_per_job", "{:.3f}"),
    ("engine RSS MiB per job", "engine_rss_mib_per_job", "{:.2f}"),
    ("sources CPU % total", "sources_cpu_pct_total", "{:.1f}"),
    ("sources CPU % per source", "sources_cpu_pct_per_source", "{:.2f}"),
    ("sources RSS MiB total", "sources_rss_mib_total", "{:.0f}"),
    ("sources exited during window", "sources_exited", "{:.0f}"),
    ("  relaunched during window", "source_relaunches", "{:.0f}"),
    ("host CPU busy (% of one core)", "host_busy_pct", "{:.0f}"),
    ("host CPU idle (% of machine)", "host_idle_pct", "{:.0f}"),
    ("  of which our processes", "our_cpu_pct", "{:.0f}"),
    ("  of which irq+softirq (kernel network)", "host_irq_pct", "{:.0f}"),
    ("  of which other processes on the host", "other_procs_cpu_pct", "{:.0f}"),
    ("  unattributed (short-lived processes)", "unattributed_cpu_pct", "{:.0f}"),
    ("media/wall time, worst job", "realtime_ratio_min", "{:.3f}"),
    ("media/wall time, mean", "realtime_ratio_mean", "{:.3f}"),
    ("lowest FFmpeg-reported speed", "speed_min", "{:.2f}x"),
    ("written Mbit/s per job", "mbps_per_job", "{:.2f}"),
    ("getStat latency ms (mean)", "getstat_ms_mean", "{:.1f}"),
    ("getStat latency ms (max)", "getstat_ms_max", "{:.1f}"),
    ("this script's CPU %", "bench_cpu_pct", "{:.2f}"),
    ("N x /stop calls, s", "stop_calls_s", "{:.1f}"),
    ("all FFmpeg gone after first /stop, s", "stop_all_s", "{:.1f}"),
]


def fmt(value: Any, pattern: str) -> str:
    if isinstance(value, dict):
        med = pattern.format(value["median"])
        if value["min"] == value["max"]:
            return med
        return f"{med} [{pattern.format(value['min'])}-{pattern.format(value['max'])}]"
    if value is None:
        return "-"
    return pattern.format(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    phases = list(results)
    rows = [("metric", *phases)]
    for label, key, pattern in ROWS:
        if any(key in results[p] for p in phases):
            rows.append((label, *(fmt(results[p].get(key), pattern) for p in phases)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=40, help="concurrent recordings (default 40)")
    p.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up once all run, s")
    p.add_argument("--phase", choices=("bare", "engine", "both"), default="both")
    p.add_argument(
        "--audio",
        choices=("copy", "aac"),
        default="copy",
        help="copy (default: pure stream copy) or re-encode the audio to AAC 128k in both phases",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per phase (median, min-max)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the clip is kept")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, files)")
    args = p.parse_args(argv)

    clip = ensure_clip(args.cache_dir)
    phases = ["bare", "engine"] if args.phase == "both" else [args.phase]
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
                try:
                    runs[ph].append((run_bare if ph == "bare" else run_engine)(args, clip, d))
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
        "command": "uv run python bench/recording_density.py " + " ".join(sys.argv[1:]),
        "jobs": args.jobs, "audio": args.audio, "window_s": args.window, "warmup_s": args.warmup,
        "repeat": args.repeat, "machine": machine(), "clip": clip.name,
    }  # fmt: skip
    print(
        f"\nRecording density: {args.jobs} jobs, window {args.window:g} s, "
        f"warm-up {args.warmup:g} s, audio {args.audio}, {args.repeat} run(s) per phase"
    )
    m = info["machine"]
    print(f"{info['date']}  {m['nproc']} x {m['cpu_model']}, {m['mem_gib']} GiB, {m['ffmpeg']}\n")
    if results:
        print(table(results))
    for ph, res in results.items():
        print(f"\n{ph} FFmpeg command: {res.get('command')}")
        if res.get("stop_problem"):
            print(f"{ph}: {res['stop_problem']}")
        extra = res.get("engine_children_not_ffmpeg")
        if extra:
            print(f"{ph}: other children of engine processes (not counted): {extra}")
    if "engine" in results:
        total = results["engine"].get("engine_cpu_pct_total")
        val = total["median"] if isinstance(total, dict) else total
        verdict = "MET" if val is not None and val < TARGET_ENGINE_CPU_PCT else "NOT met"
        print(f"\nengine target (< {TARGET_ENGINE_CPU_PCT:g} % of one core in total): {verdict}")
    for key, err in errors.items():
        print(f"\n{key} FAILED:\n{err}")
    if args.json:
        args.json.write_text(json.dumps({**info, "results": results, "runs": runs,
                                         "errors": errors}, indent=2, default=str))  # fmt: skip
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
