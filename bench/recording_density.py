"""Recording density: N concurrent stream-copy recordings of a 6 Mbps 1080p30 SRT source.

Up to three variants, one after another, each with its own fresh set of N SRT sources:

* ``bare``:     N plain ``ffmpeg -i srt://... -c copy -f mp4`` processes started by this script;
* ``engine``:   nats-server + FerretDB + the API + ONE recorder, N recording jobs created through
  ``POST /api/recording/create`` (stream copy, audio copy), ``getStat`` polled every 3 s as a
  dashboard does;
* ``datarhei``: datarhei Core (the closest peer: a Go control plane running one FFmpeg per
  process), N processes created through its REST API (``POST /api/v3/process``) with the bare
  variant's FFmpeg options, every process's state polled every 3 s (``GET /api/v3/process``).
  Built on demand from ``bench/peers/datarhei-core`` and cached (``_datarhei.py``).

For each variant it samples, over a measurement window after a warm-up, CPU (utime+stime from
/proc/<pid>/stat; 100 % = one core) and RSS (/proc/<pid>/statm, averaged over 1 s samples) of the
recording FFmpeg processes (per job), of the control plane's own processes (Reelhouse: recorder,
API, nats-server, FerretDB; datarhei: Core) and of the sources (load on the machine, but neither
control plane nor recording), plus the host's CPU use, whether the recordings keep up with real
time, and the write rate per job.

The source clip (30 s of 1920x1080 30 fps testsrc2 + 1 kHz sine, H.264 6 Mbit/s CBR with a
keyframe every second + AAC 128k, MPEG-TS) is encoded once into a cache directory; each source is
``ffmpeg -re -stream_loop -1 -i clip.ts -c copy -f mpegts srt://127.0.0.1:<port>?mode=listener``
(an FFmpeg SRT listener serves one client, hence one source per job).

    uv run python bench/recording_density.py --jobs 40 --window 30 --warmup 10 \\
        [--variants bare,engine,datarhei | --phase bare|engine|both] [--repeat 1] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``
(Core's FFmpeg too: they are started through a wrapper that sets it).
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

# _common (shared with restream_density.py) puts tests/ on sys.path for support.seeds.
from _common import (
    FFMPEG,
    TARGET_ENGINE_CPU_PCT,
    Engine,
    Realtime,
    Sources,
    Tracked,
    dir_bytes,
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
from _datarhei import CORE_ENV, Core
from support.seeds import recording_payload

# --------------------------------------------------------------------------------------------
# Phase A: bare FFmpeg
# --------------------------------------------------------------------------------------------


def bare_argv(url: str, outdir: Path, audio: str = "copy") -> list[str]:
    """``ffmpeg -i srt://... -c copy -f mp4 -movflags +frag_keyframe+empty_moov out.mp4`` plus
    ``-bsf:a aac_adtstoasc`` (FFmpeg 5.1 refuses ADTS AAC from MPEG-TS into ``+empty_moov`` MP4
    without it: "Malformed AAC bitstream detected") and ``-progress`` to a file (for speed and
    real time; the engine's FFmpeg reports progress too). ``audio="aac"`` re-encodes the audio
    the way the engine does with the seed's ``audio_transcoding: "aac"``."""
    return [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
        "-progress", str(outdir / "progress.txt"), "-y", "-i", url, *codec_args(audio),
        "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov", str(outdir / "out.mp4"),
    ]  # fmt: skip


def codec_args(audio: str = "copy") -> list[str]:
    """The bare variant's codec options (the datarhei variant uses the same)."""
    if audio == "aac":
        return ["-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-ar", "44100"]
    return ["-c", "copy", "-bsf:a", "aac_adtstoasc"]


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
    engine = Engine(work, "recorder", "recording", n)
    sources = Sources(n, clip, work / "sources")
    m: dict[str, Any] = {}  # filled by the window, completed by the stop in ``finally``
    try:
        api = engine.start()
        say(f"engine: starting {n} sources")
        sources.start()
        say(f"engine: creating {n} recording jobs")
        for i, s in enumerate(sources.items):
            engine.create(job_payload(i, s.url, args.audio))
        job_ids = engine.job_ids

        def all_running(rows: dict[str, dict[str, Any]]) -> bool:
            sources.check()
            stats = {j: r["processData"] for j, r in rows.items()}
            return sum(1 for j in job_ids if parse_us(stats.get(j, {}).get("out_time_ms"))) == n

        engine.wait_all(all_running, f"getStat to show {n} jobs")
        say(f"engine: all {n} jobs in getStat; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        relaunches = sources.relaunches

        workers, engine_tracked = engine.track()
        tracked = [Tracked("ffmpeg", f"w{pid}", pid) for pid in workers]
        tracked += [Tracked("source", f"src{i}", s.proc.pid) for i, s in enumerate(sources.items)]
        tracked += engine_tracked
        tracked.append(Tracked("bench", "bench", os.getpid()))
        rt = Realtime()

        def poll() -> None:
            stats = api.stats()
            for j in job_ids:
                row = stats.get(j)
                if row:
                    rt.seen(j, parse_us(row.get("out_time_ms")), parse_speed(row.get("speed")))

        say(f"engine: measuring for {args.window:g} s ({len(workers)} ffmpeg workers)")
        win = run_window(
            tracked, args.window, every_1s=sources.check, every_3s=poll,
            output_bytes=lambda: dir_bytes(engine.storage),
        )  # fmt: skip
        m.update(summarise(tracked, win, n))
        m.update(rt.metrics())
        m["source_relaunches"] = sources.relaunches - relaunches
        m.update(engine.window_metrics())
        return m
    finally:
        engine.stop_jobs(m)
        engine.teardown()
        sources.stop()


# --------------------------------------------------------------------------------------------
# Phase C: datarhei Core, the peer
# --------------------------------------------------------------------------------------------


def run_datarhei(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.jobs
    core = Core(work, n)
    sources = Sources(n, clip, work / "sources")
    m: dict[str, Any] = {}  # filled by the window, completed by the stop in ``finally``
    try:
        api = core.start()
        say(f"datarhei: Core {core.version} up; starting {n} sources")
        sources.start()
        say(f"datarhei: creating {n} processes")
        for i, s in enumerate(sources.items):
            core.create(f"density-{i:02d}", s.url, codec_args(args.audio))

        def all_running() -> bool:
            core.check()
            sources.check()
            states = api.states()
            return sum(
                1 for j in core.job_ids
                if states.get(j, {}).get("exec") == "running"
                and float((states[j].get("progress") or {}).get("time") or 0) > 0
            ) == n  # fmt: skip

        try:
            wait_for(all_running, timeout=60 + 2 * n, what=f"{n} Core processes to make progress",
                     interval=1)  # fmt: skip
        except TimeoutError as exc:
            raise RuntimeError(f"{exc} ({len(core.ffmpeg())} ffmpeg children); Core log tail:\n"
                               f"{tail(core.log)}") from None  # fmt: skip
        say(f"datarhei: all {n} processes running; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        relaunches = sources.relaunches

        workers, core_tracked = core.track()
        tracked = [Tracked("ffmpeg", f"w{pid}", pid) for pid in workers]
        tracked += [Tracked("source", f"src{i}", s.proc.pid) for i, s in enumerate(sources.items)]
        tracked += core_tracked
        tracked.append(Tracked("bench", "bench", os.getpid()))
        rt = Realtime()

        def poll() -> None:
            for j, st in api.states().items():
                prog = st.get("progress") or {}
                t = prog.get("time")
                rt.seen(j, int(float(t) * 1e6) if t else None, parse_speed(prog.get("speed")))

        say(f"datarhei: measuring for {args.window:g} s ({len(workers)} ffmpeg workers)")
        win = run_window(
            tracked, args.window, every_1s=sources.check, every_3s=poll,
            output_bytes=lambda: dir_bytes(core.storage),
        )  # fmt: skip
        m.update(summarise(tracked, win, n))
        m.pop("engine_target_met", None)  # Reelhouse's target, not Core's
        m.update(rt.metrics())
        m["source_relaunches"] = sources.relaunches - relaunches
        m.update(core.window_metrics())
        return m
    finally:
        core.stop_jobs(m)
        core.teardown()
        sources.stop()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

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
    ("datarhei: core CPU %", "engine_core_cpu_pct", "{:.2f}"),
    ("datarhei: core RSS MiB", "engine_core_rss_mib", "{:.1f}"),
    # engine_* keys: the control plane of the column (Reelhouse's four processes, or Core).
    ("control plane total CPU % (engine target < 10)", "engine_cpu_pct_total", "{:.2f}"),
    ("control plane total RSS MiB", "engine_rss_mib_total", "{:.0f}"),
    ("control plane CPU % per job", "engine_cpu_pct_per_job", "{:.3f}"),
    ("control plane RSS MiB per job", "engine_rss_mib_per_job", "{:.2f}"),
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
    ("status poll latency ms (mean)", "getstat_ms_mean", "{:.1f}"),
    ("status poll latency ms (max)", "getstat_ms_max", "{:.1f}"),
    ("this script's CPU %", "bench_cpu_pct", "{:.2f}"),
    ("N x stop calls, s", "stop_calls_s", "{:.1f}"),
    ("all FFmpeg gone after first stop, s", "stop_all_s", "{:.1f}"),
    ("1-min load at start of run", "load_1min_start", "{:.2f}"),
]

RUNNERS = {"bare": run_bare, "engine": run_engine, "datarhei": run_datarhei}


def variants(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in RUNNERS]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of distinct names out of {', '.join(RUNNERS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    def audio_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--audio",
            choices=("copy", "aac"),
            default="copy",
            help="copy (default: pure stream copy) or re-encode the audio to AAC 128k in every "
            "variant",
        )
        p.add_argument(
            "--variants",
            type=variants,
            help="which variants to run, in this order, e.g. bare,engine,datarhei (overrides "
            "--phase; datarhei builds datarhei Core once if needed, which needs Go)",
        )

    assert __doc__ is not None
    args = parser(__doc__.split("\n\n")[0], 40, "recordings", audio_option).parse_args(argv)

    def verdict(results: dict[str, dict[str, Any]]) -> list[str]:
        lines = []
        if "datarhei" in results:
            lines.append(f"datarhei: {results['datarhei'].get('peer')}; settings: "
                         + " ".join(f"{k}={v}" for k, v in CORE_ENV.items()))  # fmt: skip
        if "engine" in results:
            val = median(results["engine"].get("engine_cpu_pct_total"))
            met = "MET" if val is not None and val < TARGET_ENGINE_CPU_PCT else "NOT met"
            lines.append(f"engine target (< {TARGET_ENGINE_CPU_PCT:g} % of one core in total): "
                         f"{met}")  # fmt: skip
        return lines

    return run_main(
        args,
        script="recording_density.py",
        title=f"Recording density: {args.jobs} jobs, window {args.window:g} s, "
        f"warm-up {args.warmup:g} s, audio {args.audio}, {args.repeat} run(s) per variant",
        runners=RUNNERS,
        rows=ROWS,
        info_extra={"audio": args.audio},
        footer=verdict,
    )


if __name__ == "__main__":
    sys.exit(main())
