"""Ingest fan-out cost (issue 21): the data plane's CPU per contribution and per extra reader,
and the start latency of an ingest-fed recording.

nats-server + FerretDB + the API + the ingest service (``_common.Engine``), which runs the Go data
plane ``reelhouse-ingest`` (``.cache/bin``); one SRT server and one RTMP server made through the
API, one publisher stream row per contribution. Encoders are copy-only FFmpeg pushing the density
benchmarks' 6 Mbit/s 1080p30 clip in a loop (``-re -stream_loop -1 -c copy``), so they cost little;
readers are plain FFmpeg (``-c copy -f null -``) on the fan-out URL
(``srt://127.0.0.1:<fanout>?streamid=read/<server_id>/<name>``), as a job reads it.

1. **contributions**: 0, 1, 5, 10, 20 SRT contributions (``--contributions``), each with
   ``--readers-per-contribution`` readers (default 1). Per step, after a warm-up, the data
   plane's CPU (utime + stime from ``/proc/<pid>/stat`` over the window) and RSS, and the ingest
   service's CPU.
2. **readers**: one SRT contribution with 0, 1, 2, 4, 8 readers (``--readers``); then one RTMP
   contribution (``-f flv rtmp://...``, remuxed to MPEG-TS by the data plane) with 0 and 1
   reader, for the remux cost.
3. **latency**: a recorder next to the ingest service; a live SRT contribution; ``--runs`` times
   ``POST /api/recording/create`` (active, the seed's mp4 archive, stream copy) with the ingest
   input (``INPUT_TYPE_SRT_SERVER``) → ``runtime.node`` set, → the recorder's FFmpeg exists, →
   first non-empty byte of the output on disk, → ``runtime.state == running``; stop, and wait
   until the recorder has no FFmpeg, between runs. One unmeasured warm-up run first. Each
   ``--probe-ms`` value (the recorder's ``REELHOUSE_INGEST_PROBE_MS``; default 500) is one
   variant with its own recorder. Then bare FFmpeg on the same fan-out URL (the recorder's own
   command line, and an MPEG-TS copy without probing) for where the time goes.

    uv run python bench/ingest_fanout.py [--quick] [--parts contributions,readers,latency]
                                         [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DATAPLANE,
    FFMPEG,
    MIB,
    Engine,
    add_output_args,
    children,
    cmdline,
    cpu_seconds,
    distribution,
    ensure_clip,
    first_file_bytes,
    header,
    host_cpu,
    ingest_env,
    loadavg,
    reap,
    recording_job,
    rss_bytes,
    save_json,
    say,
    spawn,
    tail,
    wait_for,
    wait_for_quiet,
)
from support.media import free_port

TARGET_FIRST_BYTE_P95_S = 0.7
MILESTONES = ("response", "claimed", "ffmpeg", "first_byte", "running")


# --------------------------------------------------------------------------------------------
# FFmpeg encoders and readers that keep running
# --------------------------------------------------------------------------------------------


@dataclass
class Member:
    argv: list[str]
    log: Path
    proc: subprocess.Popen


@dataclass
class Fleet:
    """FFmpeg processes (encoders or readers) that are relaunched when they exit."""

    kind: str
    logdir: Path
    items: list[Member] = field(default_factory=list)
    relaunches: int = 0

    def add(self, argv: list[str]) -> Member:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = self.logdir / f"{self.kind}-{len(self.items):02d}.log"
        m = Member(argv, log, spawn(argv, log))
        self.items.append(m)
        return m

    def check(self) -> None:
        for m in self.items:
            if m.proc.poll() is not None:
                m.proc = spawn(m.argv, m.log)
                self.relaunches += 1

    def trim(self, keep: int) -> None:
        """Stop all but the first ``keep``."""
        gone, self.items = self.items[keep:], self.items[:keep]
        reap([m.proc for m in gone], grace=5)

    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.items if m.proc.poll() is None]


def encoder_argv(clip: Path, url: str, fmt: str = "mpegts") -> list[str]:
    return [
        FFMPEG,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(clip),
        "-c",
        "copy",
        "-f",
        fmt,
        url,
    ]


def reader_argv(url: str) -> list[str]:
    return [
        FFMPEG,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-nostats",
        "-i",
        url,
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "null",
        "-",
    ]


# --------------------------------------------------------------------------------------------
# The engine with its ingest service
# --------------------------------------------------------------------------------------------


class Rig:
    def __init__(self, work: Path, clip: Path) -> None:
        self.work, self.clip = work, clip
        self.srt_port, self.rtmp_port = free_port("udp"), free_port("tcp")
        self.fanout_port = free_port("udp")
        self.env = ingest_env(
            srt_port=self.srt_port, rtmp_port=self.rtmp_port, fanout_port=self.fanout_port,
            relay_port=free_port("udp"),
        )  # fmt: skip
        # The worker is the ingest service; a recorder is added for the latency part.
        self.engine = Engine(work, "ingest", "recording", 40, env_extra=self.env)
        self.encoders = Fleet("encoder", work / "encoders")
        self.readers = Fleet("reader", work / "readers")
        self.srt_id = self.rtmp_id = ""
        self.rows: list[dict[str, Any]] = []  # SRT publisher rows, in order of use
        self.rtmp_row: dict[str, Any] = {}

    @property
    def api(self) -> Any:
        assert self.engine.api is not None
        return self.engine.api

    def start(self) -> None:
        self.engine.start()
        wait_for(lambda: self.dataplane_pid(), timeout=30, what="the data plane process")
        self.srt_id = self._server("srt", self.srt_port)
        self.rtmp_id = self._server("rtmp", self.rtmp_port)
        self.rtmp_row = self.api.call(
            "POST",
            "/api/streams/create",
            {
                "name": "rtmp",
                "role_name": "publisher",
                "stream_id": "live/bench",
                "entity_id": self.rtmp_id,
                "module_name": "MODULE_RTMP_SERVERS",
                "active": True,
            },
        )

    def _server(self, proto: str, port: int) -> str:
        module = f"{proto}-servers"
        sid = self.api.call(
            "POST",
            f"/api/{module}/create",
            {"server_name": f"bench {proto}", "server_port": port, "active": True},
        )["id"]

        def listening() -> bool:
            got = self.api.call("POST", f"/api/{module}/getById", {"id": sid})
            return (got.get("status") or {}).get("state") == "listening"

        wait_for(listening, timeout=30, what=f"the {proto} server to listen", interval=0.5)
        return sid

    def dataplane_pid(self) -> int | None:
        return self.engine.dataplane_pid()

    def row(self, i: int) -> dict[str, Any]:
        """SRT publisher row ``i`` (made on first use)."""
        while len(self.rows) <= i:
            name = f"bench/c{len(self.rows):02d}"
            self.rows.append(
                self.api.call(
                    "POST",
                    "/api/streams/create",
                    {
                        "name": name,
                        "role_name": "publisher",
                        "stream_id": f"publisher/{name}",
                        "entity_id": self.srt_id,
                        "module_name": "MODULE_SRT_SERVERS",
                        "active": True,
                    },
                )
            )
        return self.rows[i]

    def read_url(self, server_id: str, name: str) -> str:
        return f"srt://127.0.0.1:{self.fanout_port}?streamid=read/{server_id}/{name}&latency=120000"

    def stat(self, proto: str) -> list[dict[str, Any]]:
        sid = self.srt_id if proto == "srt" else self.rtmp_id
        return self.api.call("POST", f"/api/{proto}-servers/getStat", {"id": sid})

    def wait_flowing(self, proto: str, publishers: int, readers: int) -> dict[str, Any]:
        """Until getStat shows ``publishers`` publishing connections whose readers add up to
        ``readers``, every publisher sending; relaunches exited encoders/readers meanwhile."""
        seen: dict[str, Any] = {}

        def ok() -> bool:
            self.encoders.check()
            self.readers.check()
            rows = self.stat(proto)
            pubs = [r for r in rows if r.get("role") == "publish"]
            seen.update(pubs=len(pubs), readers=sum(int(r.get("readers") or 0) for r in pubs))
            return (
                len(pubs) == publishers
                and seen["readers"] == readers
                and all((r.get("bitrate_kbits") or 0) > 0 for r in pubs)
            )

        try:
            wait_for(ok, timeout=60 + 2 * (publishers + readers), what="", interval=1.0)
        except TimeoutError:
            raise RuntimeError(
                f"getStat never showed {publishers} publishers and {readers} readers "
                f"(last: {seen}); ingest log tail:\n{tail(self.engine.logs['ingest'], 10)}"
            ) from None
        return seen

    def stop(self) -> None:
        reap([m.proc for m in self.readers.items + self.encoders.items], grace=5)
        self.engine.teardown()


# --------------------------------------------------------------------------------------------
# Parts 1 and 2: a measurement window
# --------------------------------------------------------------------------------------------


def measure(rig: Rig, proto: str, label: str, warmup: float, window: float) -> dict[str, Any]:
    """Data plane, ingest service, encoders and readers: CPU % of one core over ``window`` s
    (after ``warmup`` s), mean RSS; the publishers' and readers' bitrates from getStat."""
    t_end = time.monotonic() + warmup
    while time.monotonic() < t_end:
        rig.encoders.check()
        rig.readers.check()
        time.sleep(0.5)
    dp = rig.dataplane_pid()
    assert dp is not None
    ingest = rig.engine.services["ingest"].pid
    enc, rd = rig.encoders.pids(), rig.readers.pids()
    relaunch0 = rig.encoders.relaunches + rig.readers.relaunches
    load0 = loadavg()

    def cpu(pids: list[int]) -> float:
        return sum(c for p in pids if (c := cpu_seconds(p)) is not None)

    c0 = {"dp": cpu([dp]), "ingest": cpu([ingest]), "enc": cpu(enc), "rd": cpu(rd)}
    h0, t0 = host_cpu(), time.monotonic()
    rss: list[int] = []
    pub_kbits: list[float] = []
    read_kbits: list[float] = []
    while (left := window - (time.monotonic() - t0)) > 0:
        if (r := rss_bytes(dp)) is not None:
            rss.append(r)
        with contextlib.suppress(OSError, urllib.error.HTTPError):
            for row in rig.stat(proto):
                (pub_kbits if row.get("role") == "publish" else read_kbits).append(
                    float(row.get("bitrate_kbits") or 0)
                )
        time.sleep(min(1.0, left))
    wall = time.monotonic() - t0
    c1 = {"dp": cpu([dp]), "ingest": cpu([ingest]), "enc": cpu(enc), "rd": cpu(rd)}
    h1 = host_cpu()
    if rig.dataplane_pid() != dp:
        raise RuntimeError("the data plane was restarted during the window")
    relaunches = rig.encoders.relaunches + rig.readers.relaunches - relaunch0
    busy, total = h1[0] - h0[0], h1[1] - h0[1]
    pct = {k: (c1[k] - c0[k]) / wall * 100.0 for k in c0}
    m = {
        "step": label,
        "proto": proto,
        "contributions": len(enc),
        "readers": len(rd),
        "wall_s": wall,
        "dataplane_cpu_pct": pct["dp"],
        "dataplane_rss_mib": statistics.fmean(rss) / MIB if rss else None,
        "ingest_service_cpu_pct": pct["ingest"],
        "encoders_cpu_pct_total": pct["enc"],
        "readers_cpu_pct_total": pct["rd"],
        "publisher_kbits_mean": statistics.fmean(pub_kbits) if pub_kbits else None,
        "reader_kbits_mean": statistics.fmean(read_kbits) if read_kbits else None,
        "host_busy_pct": busy / total * 100.0 * (os.cpu_count() or 1) if total else None,
        "load_1min_start": load0,
        "load_1min_end": loadavg(),
        "relaunches_in_window": relaunches,
    }
    say(
        f"{label}: data plane {m['dataplane_cpu_pct']:.1f} % of a core, "
        f"RSS {m['dataplane_rss_mib'] or 0:.1f} MiB; ingest service "
        f"{m['ingest_service_cpu_pct']:.1f} %; load {load0:.2f}"
    )
    return m


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y)."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def part_contributions(rig: Rig, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    per = args.readers_per_contribution
    for n in args.contributions:
        while len(rig.encoders.items) < n:
            i = len(rig.encoders.items)
            row = rig.row(i)
            rig.encoders.add(encoder_argv(rig.clip, row["publish_url"]))
            for _ in range(per):
                rig.readers.add(reader_argv(rig.read_url(rig.srt_id, row["name"])))
        if n:
            rig.wait_flowing("srt", n, n * per)
        out.append(measure(rig, "srt", f"{n} contributions", args.warmup, args.window))
    return out


def part_readers(rig: Rig, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    rig.readers.trim(0)
    rig.encoders.trim(1)
    if not rig.encoders.items:
        rig.encoders.add(encoder_argv(rig.clip, rig.row(0)["publish_url"]))
    url = rig.read_url(rig.srt_id, rig.row(0)["name"])
    for k in args.readers:
        while len(rig.readers.items) < k:
            rig.readers.add(reader_argv(url))
        rig.readers.trim(k)
        rig.wait_flowing("srt", 1, k)
        out.append(measure(rig, "srt", f"1 SRT, {k} readers", args.warmup, args.window))
    # The same with one RTMP contribution instead: the remux into MPEG-TS.
    rig.readers.trim(0)
    rig.encoders.trim(0)
    time.sleep(2)
    rig.encoders.add(encoder_argv(rig.clip, rig.rtmp_row["publish_url"], "flv"))
    url = rig.read_url(rig.rtmp_id, "live/bench")
    for k in args.rtmp_readers:
        while len(rig.readers.items) < k:
            rig.readers.add(reader_argv(url))
        rig.readers.trim(k)
        rig.wait_flowing("rtmp", 1, k)
        out.append(measure(rig, "rtmp", f"1 RTMP, {k} readers", args.warmup, args.window))
    rig.readers.trim(0)
    rig.encoders.trim(0)
    return out


# --------------------------------------------------------------------------------------------
# Part 3: start latency of an ingest-fed recording
# --------------------------------------------------------------------------------------------


def ingest_job(i: int, server_id: str, row_id: str) -> dict[str, Any]:
    body = recording_job(i, "", name="ingest latency")
    body["input"]["input_type"] = "INPUT_TYPE_SRT_SERVER"
    body["input"]["input_module_id"] = server_id
    body["input"]["input_stream_id"] = row_id
    body["input"].pop("input_stream_url", None)
    return body


def one_run(i: int, rig: Rig, recorder: int, timeout: float = 30.0) -> dict[str, Any]:
    """One create → first byte / running, stop, wait for the recorder's FFmpeg to end. A thread
    watches ``/proc`` and the job's folder every 10 ms, so the API polls (``getById`` every
    ~60 ms, for ``claimed`` and ``running``) do not delay those two readings."""
    api = rig.api
    rig.encoders.check()
    at: dict[str, Any] = {k: None for k in MILESTONES}
    ff: list[int] = []
    job: dict[str, str] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and (at["ffmpeg"] is None or at["first_byte"] is None):
            now = time.monotonic() - t0
            if at["ffmpeg"] is None and (found := children(recorder, "ffmpeg")):
                ff.extend(found)
                at["ffmpeg"] = now
            folder = rig.engine.storage / job["id"] if "id" in job else None
            if at["first_byte"] is None and folder and first_file_bytes(folder) > 0:
                at["first_byte"] = now
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    watcher.start()
    try:
        body = ingest_job(i, rig.srt_id, rig.row(0)["id"])
        job["id"] = job_id = api.call("POST", "/api/recording/create", body)["id"]
        at["response"] = time.monotonic() - t0
        while time.monotonic() - t0 < timeout and any(at[k] is None for k in MILESTONES):
            rt = api.call("POST", "/api/recording/getById", {"id": job_id}).get("runtime") or {}
            if at["claimed"] is None and rt.get("node"):
                at["claimed"] = time.monotonic() - t0
            if at["running"] is None and rt.get("state") == "running":
                at["running"] = time.monotonic() - t0
            time.sleep(0.05)
    finally:
        done.set()
        watcher.join(2)
    at["command"] = " ".join(cmdline(ff[0])) if ff else None
    at["load_1min"] = loadavg()
    with contextlib.suppress(OSError, urllib.error.HTTPError):
        api.call("POST", "/api/recording/stop", {"id": job_id})
    wait_for(
        lambda: not children(recorder, "ffmpeg"), timeout=60, what="ffmpeg to end", interval=0.05
    )
    return at


def bare_runs(rig: Rig, command: str | None, runs: int) -> dict[str, list[float]]:
    """Bare FFmpeg on the fan-out URL, spawn → first byte on disk: the recorder's own command
    line (outputs moved, no progress pipe), the same with a 100 ms probe, and a video-only
    MPEG-TS stream copy with no probing (exec + SRT connect + the first packets)."""
    out: dict[str, list[float]] = {}
    if not command:
        return out
    argv = command.split(" ")
    url = argv[argv.index("-i") + 1]
    storage = str(rig.engine.storage)
    work = rig.work / "bare"
    work.mkdir(exist_ok=True)

    def recorder_argv(target: Path, probe_us: str | None) -> list[str]:
        a = list(argv)
        if "-progress" in a:
            k = a.index("-progress")
            del a[k : k + 2]
        for k, x in enumerate(a):
            if x.startswith(storage):
                a[k] = str(target) if x.endswith(".mp4") else str(target) + ".thumb-%d.jpg"
        if probe_us is not None:
            a[a.index("-analyzeduration") + 1] = probe_us
        return a

    variants: dict[str, Any] = {
        "recorder's command": lambda t: recorder_argv(t, None),
        "recorder's command, 100 ms probe": lambda t: recorder_argv(t, "100000"),
        "video-only MPEG-TS copy, no probe": lambda t: [
            FFMPEG,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-analyzeduration",
            "0",
            "-probesize",
            "32",
            "-i",
            url,
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "mpegts",
            str(t),
        ],
    }
    n = len(list(work.iterdir()))
    for _ in range(runs):
        for name, make in variants.items():
            n += 1
            target = work / f"bare-{n:03d}.{'ts' if 'MPEG-TS' in name else 'mp4'}"
            t0 = time.monotonic()
            proc = spawn(make(target), work / "bare.log")
            try:
                wait_for(
                    lambda t=target: t.exists() and t.stat().st_size > 0,
                    timeout=20,
                    what=f"bare first byte ({name})",
                    interval=0.01,
                )
                out.setdefault(name, []).append(time.monotonic() - t0)
            except TimeoutError as exc:
                say(f"bare {name}: {exc}; log tail:\n{tail(work / 'bare.log', 5)}")
            finally:
                reap([proc], signal.SIGINT, grace=5)
    return out


def part_latency(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rig.readers.trim(0)
    rig.encoders.trim(1)
    if not rig.encoders.items:
        rig.encoders.add(encoder_argv(rig.clip, rig.row(0)["publish_url"]))
    rig.wait_flowing("srt", 1, 0)
    for probe in args.probe_ms:
        key = f"recorder-{probe}"
        proc = rig.engine.add_service(
            "recorder", {"REELHOUSE_INGEST_PROBE_MS": str(probe)}, key=key
        )
        time.sleep(3)  # the recorder connects and joins (the warm-up run absorbs the rest)
        if proc.poll() is not None:
            raise RuntimeError(f"recorder exited: {tail(rig.engine.logs[key])}")
        load0 = loadavg()
        say(f"latency, probe {probe} ms: warm-up run (not counted); load {load0:.2f}")
        one_run(0, rig, proc.pid)
        samples = []
        for i in range(1, args.runs + 1):
            at = one_run(i, rig, proc.pid)
            samples.append(at)
            say(
                f"probe {probe} run {i}/{args.runs}: "
                + ", ".join(
                    f"{k} {at[k]:.3f}" if at[k] is not None else f"{k} -" for k in MILESTONES
                )
            )
        command = next((s["command"] for s in samples if s["command"]), None)
        res: dict[str, Any] = {"probe_ms": probe, "runs": len(samples), "load_1min_start": load0}
        for k in MILESTONES:
            res.update(distribution([s[k] for s in samples if s[k] is not None], k))
            res[f"{k}_missing"] = sum(1 for s in samples if s[k] is None)
        pairs = {
            "claimed_to_ffmpeg": ("claimed", "ffmpeg"),
            "ffmpeg_to_first_byte": ("ffmpeg", "first_byte"),
            "first_byte_to_running": ("first_byte", "running"),
        }
        for name, (a, b) in pairs.items():
            res.update(
                distribution(
                    [s[b] - s[a] for s in samples if s[a] is not None and s[b] is not None], name
                )
            )
        res["load_1min_end"] = loadavg()
        res["command"] = command
        res["samples_s"] = [{k: s[k] for k in (*MILESTONES, "load_1min")} for s in samples]
        if args.bare_runs:
            bare = bare_runs(rig, command, args.bare_runs)
            res["bare_first_byte_s"] = {k: distribution(v, "x") for k, v in bare.items()}
        reap([proc], grace=20)
        out[str(probe)] = res
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def f(x: Any, pattern: str = "{:.1f}") -> str:
    return "-" if x is None else pattern.format(x)


def md_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cpu_table(steps: list[dict[str, Any]]) -> str:
    rows = [
        (
            "step",
            "data plane CPU %",
            "RSS MiB",
            "ingest svc CPU %",
            "encoders CPU %",
            "readers CPU %",
            "pub kbit/s",
            "host busy %",
            "load 1m",
        )
    ]
    for m in steps:
        rows.append(
            (
                m["step"],
                f(m["dataplane_cpu_pct"], "{:.2f}"),
                f(m["dataplane_rss_mib"]),
                f(m["ingest_service_cpu_pct"], "{:.2f}"),
                f(m["encoders_cpu_pct_total"]),
                f(m["readers_cpu_pct_total"]),
                f(m["publisher_kbits_mean"], "{:.0f}"),
                f(m["host_busy_pct"], "{:.0f}"),
                f"{m['load_1min_start']:.2f}-{m['load_1min_end']:.2f}",
            )
        )
    return md_table(rows)


def derived(contrib: list[dict[str, Any]], readers: list[dict[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    pts = [(m["contributions"], m["dataplane_cpu_pct"]) for m in contrib]
    d["dataplane_cpu_pct_per_contribution_slope"] = slope(pts)
    base = next((y for x, y in pts if x == 0), None)
    d["dataplane_cpu_pct_per_contribution_at"] = {
        str(x): (y - base) / x for x, y in pts if x and base is not None
    }
    rss = [(m["contributions"], m["dataplane_rss_mib"]) for m in contrib if m["dataplane_rss_mib"]]
    d["dataplane_rss_mib_per_contribution_slope"] = slope(rss)
    svc = [(m["contributions"], m["ingest_service_cpu_pct"]) for m in contrib]
    d["ingest_service_cpu_pct_per_contribution_slope"] = slope(svc)
    srt = [(m["readers"], m["dataplane_cpu_pct"]) for m in readers if m["proto"] == "srt"]
    d["dataplane_cpu_pct_per_reader_slope"] = slope(srt)
    base = next((y for x, y in srt if x == 0), None)
    d["dataplane_cpu_pct_per_reader_at"] = {
        str(x): (y - base) / x for x, y in srt if x and base is not None
    }
    rtmp = {m["readers"]: m["dataplane_cpu_pct"] for m in readers if m["proto"] == "rtmp"}
    srt_d = dict(srt)
    d["rtmp_minus_srt_cpu_pct"] = {str(k): v - srt_d[k] for k, v in rtmp.items() if k in srt_d}
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ints = lambda s: [int(x) for x in s.split(",") if x != ""]  # noqa: E731
    p.add_argument("--parts", default="contributions,readers,latency")
    p.add_argument("--contributions", type=ints, default=[0, 1, 5, 10, 20])
    p.add_argument("--readers-per-contribution", type=int, default=1)
    p.add_argument("--readers", type=ints, default=[0, 1, 2, 4, 8])
    p.add_argument("--rtmp-readers", type=ints, default=[0, 1])
    p.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up per step, s")
    p.add_argument("--runs", type=int, default=30, help="latency runs per probe (default 30)")
    p.add_argument(
        "--probe-ms",
        type=ints,
        default=[500],
        help="recorder REELHOUSE_INGEST_PROBE_MS values, one variant each",
    )
    p.add_argument("--bare-runs", type=int, default=5, help="bare FFmpeg runs per variant")
    p.add_argument(
        "--quick",
        action="store_true",
        help="0,1,5 contributions, 0,1,4 readers, 5 s warm-up, 8 s windows, "
        "5 latency runs (make bench)",
    )
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.contributions, args.readers, args.rtmp_readers = [0, 1, 5], [0, 1, 4], [1]
        args.window, args.warmup, args.runs, args.bare_runs = 8.0, 5.0, 5, 2
    parts = set(args.parts.split(","))
    if not DATAPLANE.exists():
        raise SystemExit(f"{DATAPLANE} is missing: run `make install`")

    clip = ensure_clip(args.cache_dir)
    load0 = wait_for_quiet()
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-ingest-fanout-"))
    say(f"work directory {work}")
    rig = Rig(work, clip)
    contrib: list[dict[str, Any]] = []
    readers: list[dict[str, Any]] = []
    latency: dict[str, Any] = {}
    error = None
    try:
        rig.start()
        if "contributions" in parts:
            contrib = part_contributions(rig, args)
        if "readers" in parts:
            readers = part_readers(rig, args)
        if "latency" in parts:
            latency = part_latency(rig, args)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {error}")
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        rig.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = loadavg()

    title = (
        "Ingest fan-out: data plane CPU per contribution and per reader (6 Mbit/s 1080p30 "
        "MPEG-TS, copy-only FFmpeg encoders and readers), ingest-fed recording start latency"
    )
    m = header(title, started, load0)
    d = derived(contrib, readers)
    if contrib:
        print(
            f"1. contributions (SRT, {args.readers_per_contribution} reader(s) each), "
            f"{args.warmup:g} s warm-up, {args.window:g} s window; CPU in % of one core\n"
        )
        print(cpu_table(contrib))
        per = d["dataplane_cpu_pct_per_contribution_at"]
        print(
            f"\ndata plane per contribution (with its {args.readers_per_contribution} reader(s)): "
            f"slope {f(d['dataplane_cpu_pct_per_contribution_slope'], '{:.2f}')} % of a core; "
            + ", ".join(f"{k}: {v:.2f} %" for k, v in per.items())
            + f"; RSS slope {f(d['dataplane_rss_mib_per_contribution_slope'], '{:.2f}')} MiB"
        )
    if readers:
        print("\n2. readers of one contribution (SRT; then RTMP in)\n")
        print(cpu_table(readers))
        per = d["dataplane_cpu_pct_per_reader_at"]
        print(
            f"\ndata plane per extra SRT reader: slope "
            f"{f(d['dataplane_cpu_pct_per_reader_slope'], '{:.2f}')} % of a core; "
            + ", ".join(f"{k}: {v:.2f} %" for k, v in per.items())
        )
        print(
            "RTMP minus SRT (data plane, same readers): "
            + ", ".join(
                f"{k} reader(s): {v:+.2f} %" for k, v in d["rtmp_minus_srt_cpu_pct"].items()
            )
        )
    verdicts = []
    for probe, res in latency.items():
        print(
            f"\n3. ingest-fed recording start latency, probe {probe} ms, {res['runs']} runs "
            f"(load {res['load_1min_start']:.2f}-{res['load_1min_end']:.2f})\n"
        )
        rows = [("from create to", "p50 s", "p95 s", "max s", "missing")]
        labels = {
            "response": "create call returns",
            "claimed": "runtime.node set (claimed)",
            "ffmpeg": "recorder's FFmpeg exists",
            "first_byte": "first byte on disk",
            "running": "runtime.state running",
            "claimed_to_ffmpeg": "(claimed -> FFmpeg)",
            "ffmpeg_to_first_byte": "(FFmpeg -> first byte)",
            "first_byte_to_running": "(first byte -> running)",
        }
        for k, label in labels.items():
            rows.append(
                (
                    label,
                    f(res[f"{k}_p50"], "{:.3f}"),
                    f(res[f"{k}_p95"], "{:.3f}"),
                    f(res[f"{k}_max"], "{:.3f}"),
                    str(res.get(f"{k}_missing", "-")),
                )
            )
        print(md_table(rows))
        for name, dist in (res.get("bare_first_byte_s") or {}).items():
            print(
                f"bare FFmpeg, {name}: spawn -> first byte p50 {f(dist['x_p50'], '{:.3f}')} s, "
                f"max {f(dist['x_max'], '{:.3f}')} s ({dist['x_n']} runs)"
            )
        p95 = res["first_byte_p95"]
        met = p95 is not None and p95 <= TARGET_FIRST_BYTE_P95_S
        res["target_met"] = met
        verdicts.append(
            f"probe {probe} ms: target first byte p95 <= {TARGET_FIRST_BYTE_P95_S:g} s "
            f"{'MET' if met else 'NOT met'} (p95 {f(p95, '{:.3f}')} s)"
        )
        print(f"recorder FFmpeg: {res['command']}")
    for v in verdicts:
        print(f"\n{v}")
    print(f"\n1-min load at start {load0:.2f}, at end {load1:.2f}")
    if error:
        print(f"\nFAILED: {error}")
    save_json(
        args.json,
        {
            "date": started.isoformat(timespec="seconds"),
            "command": "uv run python bench/ingest_fanout.py " + " ".join(sys.argv[1:]),
            "machine": m,
            "clip": clip.name,
            "load_start": load0,
            "load_end": load1,
            "readers_per_contribution": args.readers_per_contribution,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "contributions": contrib,
            "readers": readers,
            "derived": d,
            "latency": latency,
            "relaunches": {"encoders": rig.encoders.relaunches, "readers": rig.readers.relaunches},
            "error": error,
        },
    )
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
