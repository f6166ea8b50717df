"""Restream density: N concurrent stream-copy SRT→SRT restreams of a 6 Mbps 1080p30 SRT source.

Two phases, each with its own fresh set of N SRT sources and N SRT receivers:

* ``bare``:   N plain ``ffmpeg -i srt://<source> -c copy -f mpegts srt://<receiver>`` processes
  started by this script;
* ``engine``: nats-server + FerretDB + the API + ONE restreamer, N restream jobs created through
  ``POST /api/restream/create`` from the seed's "SRT bridge to another SRT destination" (stream
  copy), input = a source, output = a receiver; ``getStat`` polled every 3 s as a dashboard does.

Sources are the recording benchmark's (``_common.Sources``: copy-only SRT listeners looping the
cached clip). Each receiver is an SRT listener ``ffmpeg -i srt://127.0.0.1:<port>?mode=listener
-c copy -f mpegts /dev/null`` with ``-progress`` to a file; sources and receivers are load on the
machine, neither engine nor restream, and are reported separately.

For each phase it samples, over a measurement window after a warm-up, CPU (utime+stime from
/proc/<pid>/stat; 100 % = one core) and RSS (/proc/<pid>/statm, averaged over 1 s samples) of the
restream FFmpeg processes (per job), of the engine's own processes (restreamer, API, nats-server,
FerretDB), of the receivers and of the sources, plus the host's CPU use and whether media keeps
real time (the restream FFmpeg's progress and the receivers' progress). A broken pipeline cannot
pass as cheap: the engine phase checks that every job's destination is "sending" in getStat at
every poll, and both phases check that every receiver's byte count grows over the window. At the
end of the engine phase every job is stopped with ``/api/restream/stop`` and the time until no
FFmpeg child of the restreamer remains is reported (a problem if any remains after 60 s).

    uv run python bench/restream_density.py --jobs 20 --window 30 --warmup 10 \\
        [--phase bare|engine|both] [--repeat 1] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# _common (shared with recording_density.py) puts tests/ on sys.path for support.seeds.
from _common import (
    FFMPEG,
    Engine,
    Realtime,
    Sources,
    Tracked,
    last_progress,
    median,
    parse_speed,
    parse_us,
    parser,
    pause,
    reap,
    run_main,
    run_window,
    say,
    spawn,
    summarise,
    tail,
    wait_for,
)
from support.seeds import restream_payload

SEED_PRESET = 1  # restreams-api.txt: 0 SRT→RTMP, 1 "SRT bridge to another SRT destination"

# --------------------------------------------------------------------------------------------
# Receivers
# --------------------------------------------------------------------------------------------


class Receivers(Sources):
    """N SRT listener receivers (one per job), relaunched by :meth:`check` like the sources: an
    FFmpeg SRT listener takes one caller and exits when it leaves. Each writes ``-progress`` to
    ``<log>.progress`` (bytes received and media time)."""

    kind = "receiver"

    def _spawn(self, port: int, log: Path) -> subprocess.Popen:
        argv = [
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
            "-progress", str(log.with_suffix(".progress")), "-y",
            "-i", f"srt://127.0.0.1:{port}?mode=listener", "-c", "copy", "-f", "mpegts", os.devnull,
        ]  # fmt: skip
        return spawn(argv, log)

    def progress(self) -> list[dict[str, str]]:
        return [last_progress(r.log.with_suffix(".progress")) for r in self.items]

    def sizes(self) -> list[int]:
        """Bytes each receiver has taken in (since its last relaunch)."""
        return [parse_us(p.get("total_size")) or 0 for p in self.progress()]

    def all_receiving(self) -> bool:
        return all(parse_us(p.get("out_time_us")) for p in self.progress())


class ReceiverWatch:
    """Per receiver: media time over the window (:class:`Realtime`) and whether bytes arrived."""

    def __init__(self, receivers: Receivers) -> None:
        self.receivers = receivers
        self.rt = Realtime()
        self.size0 = receivers.sizes()

    def poll(self) -> None:
        for i, p in enumerate(self.receivers.progress()):
            self.rt.seen(str(i), parse_us(p.get("out_time_us")), None)

    def metrics(self) -> dict[str, Any]:
        self.poll()
        size1 = self.receivers.sizes()
        got = [b - a for a, b in zip(self.size0, size1, strict=True)]
        rt = self.rt.metrics()
        return {
            "rx_realtime_ratio_min": rt["realtime_ratio_min"],
            "rx_realtime_ratio_mean": rt["realtime_ratio_mean"],
            "receivers_without_data": sum(1 for g in got if g <= 0),
        }


def window_bytes(receivers: Receivers) -> int:
    """Bytes the receivers took in, for ``run_window``'s rate (not lowered by a relaunch)."""
    return sum(receivers.sizes())


def pipeline(label: str, n: int, clip: Path, work: Path) -> tuple[Sources, Receivers]:
    say(f"{label}: starting {n} sources and {n} receivers")
    sources = Sources(n, clip, work / "sources").start()
    try:
        receivers = Receivers(n, clip, work / "receivers").start()
    except BaseException:
        sources.stop()
        raise
    return sources, receivers


def measured(
    ffmpeg: list[Tracked], sources: Sources, receivers: Receivers, engine: list[Tracked]
) -> list[Tracked]:
    tracked = list(ffmpeg)
    tracked += [Tracked("source", f"src{i}", s.proc.pid) for i, s in enumerate(sources.items)]
    tracked += [Tracked("receiver", f"rx{i}", r.proc.pid) for i, r in enumerate(receivers.items)]
    tracked += engine
    tracked.append(Tracked("bench", "bench", os.getpid()))
    return tracked


# --------------------------------------------------------------------------------------------
# Phase A: bare FFmpeg
# --------------------------------------------------------------------------------------------


def bare_argv(src: str, dst: str, progress: Path) -> list[str]:
    """``ffmpeg -i srt://<source> -c copy -f mpegts srt://<receiver>`` with ``-progress`` to a
    file (for speed and real time; the engine's FFmpeg reports progress too)."""
    return [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
        "-progress", str(progress), "-i", src, "-c", "copy", "-f", "mpegts", dst,
    ]  # fmt: skip


def run_bare(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.jobs
    sources, receivers = pipeline("bare", n, clip, work)
    procs: list[subprocess.Popen] = []
    dirs: list[Path] = []

    def check() -> None:
        sources.check()
        receivers.check()

    try:
        say(f"bare: starting {n} ffmpeg restreams")
        for i, (s, r) in enumerate(zip(sources.items, receivers.items, strict=True)):
            d = work / f"job{i:02d}"
            d.mkdir(parents=True)
            dirs.append(d)
            procs.append(spawn(bare_argv(s.url, r.url, d / "progress.txt"), d / "ffmpeg.log"))

        def all_flowing() -> bool:
            dead = [d for d, p in zip(dirs, procs, strict=True) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"bare ffmpeg exited at start: {tail(dead[0] / 'ffmpeg.log')}")
            check()
            started = all(
                parse_us(last_progress(d / "progress.txt").get("out_time_us")) for d in dirs
            )
            return started and receivers.all_receiving()

        wait_for(all_flowing, timeout=30 + n, what=f"{n} bare restreams to reach the receivers")
        say(f"bare: all {n} restreaming; warm-up {args.warmup:g} s")
        pause(args.warmup, check)
        relaunches = sources.relaunches, receivers.relaunches

        ff = [Tracked("ffmpeg", f"job{i}", p.pid) for i, p in enumerate(procs)]
        tracked = measured(ff, sources, receivers, [])
        rt, rx = Realtime(), ReceiverWatch(receivers)

        def poll() -> None:
            for i, d in enumerate(dirs):
                block = last_progress(d / "progress.txt")
                rt.seen(str(i), parse_us(block.get("out_time_us")), parse_speed(block.get("speed")))
            rx.poll()

        say(f"bare: measuring for {args.window:g} s")
        win = run_window(
            tracked, args.window, every_1s=check, every_3s=poll,
            output_bytes=lambda: window_bytes(receivers),
        )  # fmt: skip
        poll()
        m = summarise(tracked, win, n)
        m.update(rt.metrics())
        m.update(rx.metrics())
        m["source_relaunches"] = sources.relaunches - relaunches[0]
        m["receiver_relaunches"] = receivers.relaunches - relaunches[1]
        m["command"] = " ".join(bare_argv("srt://<source>", "srt://<receiver>", Path("<file>")))
        return m
    finally:
        reap(procs, signal.SIGINT, grace=15)
        receivers.stop()
        sources.stop()


# --------------------------------------------------------------------------------------------
# Phase B: the engine
# --------------------------------------------------------------------------------------------


def job_payload(i: int, src: str, dst: str) -> dict[str, Any]:
    """The seed's SRT→SRT bridge (stream copy) from ``src`` to ``dst``."""
    body = restream_payload(SEED_PRESET)
    body["restream_name"] = f"density {i:02d}"
    body["input"]["input_stream_url"] = src
    body["input"]["entity_name"] = body["restream_name"]
    body["output"]["output_stream_url"] = dst
    body["output"]["entity_name"] = body["restream_name"]
    body["active"] = True
    return body


def sending(row: dict[str, Any] | None) -> bool:
    """Whether getStat shows the job's every destination as "sending"."""
    dests = (row or {}).get("destinations") or []
    return bool(dests) and all(d.get("state") == "sending" for d in dests)


def run_engine(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.jobs
    engine = Engine(work, "restreamer", "restream", n)
    sources: Sources | None = None
    receivers: Receivers | None = None
    m: dict[str, Any] = {}  # filled by the window, completed by the stop in ``finally``
    try:
        api = engine.start()
        sources, receivers = pipeline("engine", n, clip, work)
        src, rcv = sources, receivers

        def check() -> None:
            src.check()
            rcv.check()

        say(f"engine: creating {n} restream jobs")
        for i, (s, r) in enumerate(zip(src.items, rcv.items, strict=True)):
            engine.create(job_payload(i, s.url, r.url))
        job_ids = engine.job_ids

        def all_flowing(rows: dict[str, dict[str, Any]]) -> bool:
            check()
            ok = sum(
                1
                for j in job_ids
                if sending(rows.get(j))
                and parse_us(rows.get(j, {}).get("processData", {}).get("out_time_ms"))
            )
            return ok == n and rcv.all_receiving()

        engine.wait_all(all_flowing, f"getStat to show {n} jobs sending and receivers receiving")
        say(f"engine: all {n} jobs sending; warm-up {args.warmup:g} s")
        pause(args.warmup, check)
        relaunches = src.relaunches, rcv.relaunches

        workers, engine_tracked = engine.track()
        ff = [Tracked("ffmpeg", f"w{pid}", pid) for pid in workers]
        tracked = measured(ff, src, rcv, engine_tracked)
        rt, rx = Realtime(), ReceiverWatch(rcv)
        not_sending: list[int] = []  # jobs not "sending" (or missing), per poll

        def poll() -> None:
            rows = api.rows()
            not_sending.append(sum(1 for j in job_ids if not sending(rows.get(j))))
            for j in job_ids:
                row = rows.get(j, {}).get("processData")
                if row:
                    rt.seen(j, parse_us(row.get("out_time_ms")), parse_speed(row.get("speed")))
            rx.poll()

        say(f"engine: measuring for {args.window:g} s ({len(workers)} ffmpeg workers)")
        win = run_window(
            tracked, args.window, every_1s=check, every_3s=poll,
            output_bytes=lambda: window_bytes(rcv),
        )  # fmt: skip
        poll()
        m.update(summarise(tracked, win, n))
        m.update(rt.metrics())
        m.update(rx.metrics())
        m["source_relaunches"] = src.relaunches - relaunches[0]
        m["receiver_relaunches"] = rcv.relaunches - relaunches[1]
        m["polls_with_job_not_sending"] = sum(1 for k in not_sending if k)
        m["jobs_not_sending_max"] = max(not_sending) if not_sending else None
        m.update(engine.window_metrics())
        return m
    finally:
        engine.stop_jobs(m)
        engine.teardown()
        for group in (receivers, sources):
            if group is not None:
                group.stop()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    # (label, metric key, format)
    ("restream ffmpeg processes", "workers", "{:.0f}"),
    ("  exited/replaced during window", "workers_exited", "{:.0f}"),
    ("FFmpeg CPU % per job (mean)", "ffmpeg_cpu_pct_per_job", "{:.2f}"),
    ("FFmpeg CPU % per job (max)", "ffmpeg_cpu_pct_per_job_max", "{:.2f}"),
    ("FFmpeg RSS MiB per job", "ffmpeg_rss_mib_per_job", "{:.1f}"),
    ("FFmpeg PSS MiB per job", "ffmpeg_pss_mib_per_job", "{:.1f}"),
    ("FFmpeg CPU % total", "ffmpeg_cpu_pct_total", "{:.1f}"),
    ("FFmpeg RSS MiB total", "ffmpeg_rss_mib_total", "{:.0f}"),
    ("engine: restreamer CPU %", "engine_restreamer_cpu_pct", "{:.2f}"),
    ("engine: restreamer RSS MiB", "engine_restreamer_rss_mib", "{:.1f}"),
    ("engine: api CPU %", "engine_api_cpu_pct", "{:.2f}"),
    ("engine: api RSS MiB", "engine_api_rss_mib", "{:.1f}"),
    ("engine: nats-server CPU %", "engine_nats-server_cpu_pct", "{:.2f}"),
    ("engine: nats-server RSS MiB", "engine_nats-server_rss_mib", "{:.1f}"),
    ("engine: ferretdb CPU %", "engine_ferretdb_cpu_pct", "{:.2f}"),
    ("engine: ferretdb RSS MiB", "engine_ferretdb_rss_mib", "{:.1f}"),
    ("engine total CPU %", "engine_cpu_pct_total", "{:.2f}"),
    ("engine total RSS MiB", "engine_rss_mib_total", "{:.0f}"),
    ("engine CPU % per job", "engine_cpu_pct_per_job", "{:.3f}"),
    ("engine RSS MiB per job", "engine_rss_mib_per_job", "{:.2f}"),
    ("receivers CPU % total", "receivers_cpu_pct_total", "{:.1f}"),
    ("receivers CPU % per receiver", "receivers_cpu_pct_per_receiver", "{:.2f}"),
    ("receivers RSS MiB total", "receivers_rss_mib_total", "{:.0f}"),
    ("receivers exited during window", "receivers_exited", "{:.0f}"),
    ("  relaunched during window", "receiver_relaunches", "{:.0f}"),
    ("receivers with no data in window", "receivers_without_data", "{:.0f}"),
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
    ("receivers' media/wall time, worst", "rx_realtime_ratio_min", "{:.3f}"),
    ("receivers' media/wall time, mean", "rx_realtime_ratio_mean", "{:.3f}"),
    ("received Mbit/s per job", "mbps_per_job", "{:.2f}"),
    ("getStat polls with a job not sending", "polls_with_job_not_sending", "{:.0f}"),
    ("getStat latency ms (mean)", "getstat_ms_mean", "{:.1f}"),
    ("getStat latency ms (max)", "getstat_ms_max", "{:.1f}"),
    ("this script's CPU %", "bench_cpu_pct", "{:.2f}"),
    ("N x /stop calls, s", "stop_calls_s", "{:.1f}"),
    ("all FFmpeg gone after first /stop, s", "stop_all_s", "{:.1f}"),
]


def checks(results: dict[str, dict[str, Any]]) -> list[str]:
    """Whether the pipelines really carried media (worst over the runs), and the engine's cost."""
    lines = []
    for ph, res in results.items():
        worst = {k: v["max"] if isinstance(v, dict) and "max" in v else v for k, v in res.items()}
        ratio = res.get("rx_realtime_ratio_min")
        low = ratio["min"] if isinstance(ratio, dict) else ratio
        problems = []
        if worst.get("receivers_without_data"):
            problems.append(f"{worst['receivers_without_data']} receiver(s) got no data")
        if worst.get("polls_with_job_not_sending"):
            problems.append("a job's destination was not 'sending' in getStat")
        if worst.get("workers_exited") or worst.get("workers_replaced"):
            problems.append("restream FFmpeg exited or was replaced during the window")
        if low is None:
            problems.append("no media time from the receivers")
        elif low < 0.95:
            problems.append(f"receivers' worst media/wall {low:.3f} < 0.95 (not real time)")
        lines.append(f"{ph} pipeline check: " + ("OK" if not problems else "; ".join(problems)))
    if "engine" in results:
        e = results["engine"]
        lines.append(
            f"engine total CPU: {median(e.get('engine_cpu_pct_total')):.2f} % of one core, "
            f"{median(e.get('engine_cpu_pct_per_job')):.3f} % per job; "
            f"RSS {median(e.get('engine_rss_mib_total')):.0f} MiB"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None
    args = parser(__doc__.split("\n\n")[0], 20, "restreams").parse_args(argv)
    return run_main(
        args,
        script="restream_density.py",
        title=f"Restream density (SRT→SRT, stream copy): {args.jobs} jobs, window "
        f"{args.window:g} s, warm-up {args.warmup:g} s, {args.repeat} run(s) per phase",
        runners={"bare": run_bare, "engine": run_engine},
        rows=ROWS,
        footer=checks,
    )


if __name__ == "__main__":
    sys.exit(main())
