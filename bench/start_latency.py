"""Start latency: ``POST /api/recording/create`` with ``active: true`` → first progress, and →
first byte on disk.

nats-server + FerretDB + the API + one recorder (``_common.Engine``), one copy-only SRT listener
source looping the 6 Mbps 1080p30 clip of the density benchmarks. Each run creates one mp4
recording job (the seed's archive, stream copy, audio copy) and times, from just before the
``create`` call:

* ``response``: the ``create`` call returns;
* ``claimed``: ``runtime.node`` is set (the recorder holds the lease; ``getById`` every ~60 ms);
* ``ffmpeg``: an FFmpeg child of the recorder exists (``/proc`` every ~20 ms);
* ``first byte``: a non-hidden file in the job's folder is non-empty (every ~20 ms; the mp4
  is fragmented with an empty moov, so its header lands once FFmpeg has probed the input);
* ``first stats``: the first message on NATS ``reelhouse.stats.recording.<id>``;
* ``running``: ``runtime.state == "running"`` in ``getById`` (the recorder sets it on FFmpeg's
  first progress report).

Then the job is stopped, the run waits until the recorder has no FFmpeg child, and the source is
restarted (an FFmpeg SRT listener serves one client). One unmeasured run first warms the path.

    uv run python bench/start_latency.py [--runs 50] [--quick] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    FFMPEG,
    Engine,
    Sources,
    StatsWatcher,
    add_output_args,
    children,
    distribution,
    ensure_clip,
    first_file_bytes,
    header,
    loadavg,
    reap,
    recording_job,
    save_json,
    say,
    source_ready,
    spawn,
    wait_for,
    wait_for_quiet,
)

TARGET_FIRST_BYTE_P95_S = 1.5
MILESTONES = ("response", "claimed", "ffmpeg", "first_byte", "first_stats", "running")


def one_run(
    i: int, engine: Engine, sources: Sources, watcher: StatsWatcher, timeout: float = 30.0
) -> dict[str, float | None]:
    api = engine.api
    assert api is not None
    src = sources.items[0]
    wait_for(lambda: source_ready(src), timeout=20, what="the source to listen", interval=0.02)
    recorder = engine.worker_pid
    t0 = time.monotonic()
    job = api.call("POST", "/api/recording/create", recording_job(i, src.url, name="latency"))
    at: dict[str, float | None] = {k: None for k in MILESTONES}
    at["response"] = time.monotonic() - t0
    job_id = job["id"]
    folder = engine.storage / job_id
    tick = 0
    while time.monotonic() - t0 < timeout and any(v is None for v in at.values()):
        now = time.monotonic() - t0
        if at["ffmpeg"] is None and children(recorder, "ffmpeg"):
            at["ffmpeg"] = now
        if at["first_byte"] is None and first_file_bytes(folder) > 0:
            at["first_byte"] = now
        if at["first_stats"] is None and job_id in watcher.first:
            at["first_stats"] = watcher.first[job_id] - t0
        if tick % 3 == 0 and (at["claimed"] is None or at["running"] is None):
            rt = api.call("POST", "/api/recording/getById", {"id": job_id}).get("runtime") or {}
            if at["claimed"] is None and rt.get("node"):
                at["claimed"] = time.monotonic() - t0
            if at["running"] is None and rt.get("state") == "running":
                at["running"] = time.monotonic() - t0
        tick += 1
        time.sleep(0.02)
    with contextlib.suppress(OSError, urllib.error.HTTPError):
        api.call("POST", "/api/recording/stop", {"id": job_id})
    # Wait for the job's FFmpeg (and the session's join) to end, then give the next run a fresh
    # source: the listener that served this one exits when its client leaves.
    wait_for(lambda: not children(recorder, "ffmpeg"), timeout=60, what="ffmpeg to end",
             interval=0.05)  # fmt: skip
    reap([src.proc], grace=5)
    sources.check()
    return at


PROBE_SETTINGS = {
    "engine (2 s, 10 MB)": ["-analyzeduration", "2000000", "-probesize", "10000000"],
    "0.5 s, 1 MB": ["-analyzeduration", "500000", "-probesize", "1000000"],
}


def bare_probe(sources: Sources, work: Path, runs: int) -> dict[str, list[float]]:
    """Bare FFmpeg with the engine's input options and output (mp4, empty moov), once with the
    engine's probe bounds and once with smaller ones: seconds from spawn to the first byte."""
    out: dict[str, list[float]] = {k: [] for k in PROBE_SETTINGS}
    src = sources.items[0]
    for r in range(runs):
        for name, probe in PROBE_SETTINGS.items():
            wait_for(lambda: source_ready(src), timeout=20, what="the source", interval=0.02)
            target = work / f"bare-{r}-{len(out[name])}-{probe[1]}.mp4"
            argv = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
                    "-protocol_whitelist", "srt", *probe, "-rw_timeout", "10000000",
                    "-i", src.url, "-map", "0:v:0?", "-c:v", "copy", "-map", "0:a:0?",
                    "-c:a", "copy", "-bsf:a", "aac_adtstoasc", "-n", "-f", "mp4", "-movflags",
                    "+frag_keyframe+empty_moov+default_base_moof", "-flush_packets", "1",
                    str(target)]  # fmt: skip
            t0 = time.monotonic()
            proc = spawn(argv, work / "bare.log")
            try:
                wait_for(lambda t=target: t.exists() and t.stat().st_size > 0, timeout=30,
                         what="bare first byte", interval=0.02)  # fmt: skip
                out[name].append(time.monotonic() - t0)
            finally:
                reap([proc], signal.SIGINT, grace=5)
                reap([src.proc], grace=5)
                sources.check()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=50, help="measured runs (default 50)")
    p.add_argument("--bare-runs", type=int, default=10,
                   help="bare FFmpeg probe comparison runs per setting (default 10)")  # fmt: skip
    p.add_argument("--probe-ms", type=int, default=None,
                   help="the recorder's REELHOUSE_PROBE_MS (default: its own, 2000)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="8 runs, 2 bare runs (make bench)")
    add_output_args(p)
    args = p.parse_args(argv)
    runs = 8 if args.quick else args.runs
    bare_runs = 2 if args.quick else args.bare_runs

    clip = ensure_clip(args.cache_dir)
    load0 = wait_for_quiet()
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-latency-"))
    say(f"work directory {work}")
    probe_env = {"REELHOUSE_PROBE_MS": str(args.probe_ms)} if args.probe_ms else {}
    engine = Engine(work, "recorder", "recording", 40, env_extra=probe_env)
    sources = Sources(1, clip, work / "sources")
    watcher: StatsWatcher | None = None
    samples: list[dict[str, float | None]] = []
    bare: dict[str, list[float]] = {}
    error = None
    try:
        engine.start()
        watcher = StatsWatcher(engine.env["REELHOUSE_NATS_URL"], "recording").start()
        sources.start()
        say("warm-up run (not counted)")
        one_run(0, engine, sources, watcher)
        for i in range(1, runs + 1):
            at = one_run(i, engine, sources, watcher)
            samples.append(at)
            say(f"run {i}/{runs}: " + ", ".join(
                f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in at.items()))  # fmt: skip
        if bare_runs:
            say(f"bare FFmpeg probe comparison, {bare_runs} run(s) per setting")
            bare = bare_probe(sources, work, bare_runs)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {error}")
    finally:
        if watcher is not None:
            watcher.stop()
        engine.teardown()
        sources.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = loadavg()

    results: dict[str, Any] = {}
    for k in MILESTONES:
        vals = [s[k] for s in samples if s[k] is not None]
        results.update(distribution(vals, k))
        results[f"{k}_missing"] = sum(1 for s in samples if s[k] is None)
    probe = [s["first_byte"] - s["ffmpeg"] for s in samples
             if s["first_byte"] is not None and s["ffmpeg"] is not None]  # fmt: skip
    results.update(distribution(probe, "ffmpeg_to_first_byte"))
    to_ffmpeg = [s["ffmpeg"] for s in samples if s["ffmpeg"] is not None]
    results.update(distribution(to_ffmpeg, "create_to_ffmpeg"))

    title = (
        f"Start latency: create (active: true) -> first progress / first byte, "
        f"{len(samples)} runs, 6 Mbps 1080p30 SRT source, mp4 stream copy, "
        f"probe {args.probe_ms or 2000} ms"
    )
    m = header(title, started, load0)
    rows = [("from create to", "p50 s", "p95 s", "p99 s", "min s", "max s", "missing")]
    labels = {
        "response": "create call returns", "claimed": "runtime.node set (claimed)",
        "ffmpeg": "FFmpeg process exists", "first_byte": "first byte on disk",
        "first_stats": "first stats message (NATS)", "running": "runtime.state running",
        "ffmpeg_to_first_byte": "(FFmpeg start -> first byte)",
    }  # fmt: skip
    for k, label in labels.items():
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        rows.append((label, f(results[f"{k}_p50"]), f(results[f"{k}_p95"]),
                     f(results[f"{k}_p99"]), f(results[f"{k}_min"]), f(results[f"{k}_max"]),
                     str(results.get(f"{k}_missing", "")) or "-"))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if bare:
        print("\nbare FFmpeg (engine's input options and mp4 output), spawn -> first byte:")
        for name, xs in bare.items():
            d = distribution(xs, "x")
            print(f"  probe {name}: p50 {d['x_p50'] or 0:.3f} s, max {d['x_max'] or 0:.3f} s "
                  f"({len(xs)} runs)")  # fmt: skip
            results[f"bare_first_byte_{name}"] = d
    p95 = results["first_byte_p95"]
    met = p95 is not None and p95 < TARGET_FIRST_BYTE_P95_S
    verdict = (
        f"target start-to-first-byte p95 < {TARGET_FIRST_BYTE_P95_S:g} s: "
        f"{'MET' if met else 'NOT met'} (p95 {p95 if p95 is None else round(p95, 3)} s)"
    )
    print(f"\n{verdict}")
    print(f"1-min load at start {load0:.2f}, at end {load1:.2f}")
    if error:
        print(f"\nFAILED: {error}")
    save_json(args.json, {
        "date": started.isoformat(timespec="seconds"), "command": "uv run python "
        "bench/start_latency.py " + " ".join(sys.argv[1:]), "runs": len(samples),
        "probe_ms": args.probe_ms or 2000,
        "machine": m, "clip": clip.name, "load_start": load0, "load_end": load1,
        "results": results, "samples_s": samples, "bare_probe_s": bare,
        "target_met": met, "error": error,
    })  # fmt: skip
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
