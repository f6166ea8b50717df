"""Soak: N recordings (default 20) and light API load for a long time (default 30 min); RSS and
PSS of every service process at the start, every few minutes and at the end.

nats-server + FerretDB + the API + one recorder (``_common.Engine``), N copy-only SRT listener
sources looping the 6 Mbps 1080p30 clip of the density benchmarks, N mp4 recordings (the seed's
archive, stream copy, audio copy). While they run, a thread plays a dashboard and a script:
``getStat`` every 1 s, ``getById`` of the next job every 1 s, ``getAll`` every 5 s (about 2.2
requests/s; latency per sample interval is reported). After a warm-up the first sample is taken;
then one every ``--sample`` seconds and one at the end: RSS (``/proc/<pid>/statm``) and PSS
(``smaps_rollup``) of api, recorder, nats-server and ferretdb, and the total of the recorder's
FFmpeg children (and how many there are, and how many were replaced since the start).
Growth = end / start - 1, per process.

    uv run python bench/soak.py [--duration 1800] [--jobs 20] [--sample 300] [--warmup 60]
        [--quick] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
At the end the recorder drains (SIGTERM) and the work directory is removed: N x 6 Mbit/s for
30 min is about 27 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MIB,
    Api,
    Engine,
    Sources,
    add_output_args,
    children,
    cpu_seconds,
    distribution,
    ensure_clip,
    header,
    loadavg,
    pause,
    pss_bytes,
    rss_bytes,
    save_json,
    say,
    wait_for_quiet,
)

TARGET_RSS_GROWTH_PCT = 5.0
"""Issue 19: RSS growth of every process over the 30-minute soak, the database included."""
SERVICES = ("api", "recorder", "nats-server", "ferretdb")
MEASURED = (*SERVICES, "postgres")
"""What gets a verdict: the services, and the PostgreSQL cluster FerretDB runs on (its postmaster
and every backend, summed; PSS is the fair figure for it, as its processes share buffers)."""


class Client(threading.Thread):
    """getStat every 1 s, getById every 1 s, getAll every 5 s; latencies in the current bucket."""

    def __init__(self, api: Api, ids: list[str]) -> None:
        super().__init__(name="soak-client", daemon=True)
        self.api = Api(int(api.base.rsplit(":", 1)[1]), api.token, "recording")
        self.ids = ids
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.bucket: dict[str, list[float]] = {}
        self.errors = 0
        self.short_getstat = 0  # getStat answers with fewer rows than jobs

    def take(self) -> tuple[dict[str, list[float]], int]:
        with self.lock:
            b, self.bucket = self.bucket, {}
            return b, self.errors

    def _call(self, name: str, path: str, body: dict[str, Any]) -> Any:
        t0 = time.monotonic()
        try:
            got = self.api.call("POST", path, body)
        except (OSError, urllib.error.HTTPError, ValueError):
            with self.lock:
                self.errors += 1
            return None
        with self.lock:
            self.bucket.setdefault(name, []).append(time.monotonic() - t0)
        return got

    def run(self) -> None:
        k = 0
        t0 = time.monotonic()
        while not self.done.is_set():
            rows = self._call("getStat", "/api/recording/getStat", {})
            if rows is not None and len(rows) < len(self.ids):
                self.short_getstat += 1
            self._call("getById", "/api/recording/getById", {"id": self.ids[k % len(self.ids)]})
            if k % 5 == 0:
                self._call("getAll", "/api/recording/getAll", {})
            k += 1
            self.done.wait(max(0.0, t0 + k - time.monotonic()))


def sample(engine: Engine, t0: float, client: Client, ff0: set[int]) -> dict[str, Any]:
    s: dict[str, Any] = {"t_s": round(time.monotonic() - t0, 1), "load": loadavg()}
    for name, pid in engine.service_pids().items():
        if name not in SERVICES:
            continue
        r, p = rss_bytes(pid), pss_bytes(pid)
        s[f"{name}_rss_mib"] = r / MIB if r is not None else None
        s[f"{name}_pss_mib"] = p / MIB if p is not None else None
        s[f"{name}_cpu_s"] = cpu_seconds(pid)
    fdb = engine.service_pids().get("ferretdb")
    postmaster = children(fdb, "postgres") if fdb else []
    cluster = [*postmaster, *(c for pm in postmaster for c in children(pm, "postgres"))]
    s["postgres_n"] = len(cluster)
    s["postgres_rss_mib"] = sum(rss_bytes(p) or 0 for p in cluster) / MIB if cluster else None
    s["postgres_pss_mib"] = sum(pss_bytes(p) or 0 for p in cluster) / MIB if cluster else None
    ff = children(engine.worker_pid, "ffmpeg")
    s["ffmpeg_n"] = len(ff)
    s["ffmpeg_replaced"] = len(set(ff) - ff0)
    s["ffmpeg_rss_mib"] = sum(rss_bytes(p) or 0 for p in ff) / MIB
    s["ffmpeg_pss_mib"] = sum(pss_bytes(p) or 0 for p in ff) / MIB
    lat, errors = client.take()
    for name, xs in lat.items():
        d = distribution([x * 1000 for x in xs], f"{name}_ms")
        s[f"{name}_ms_p50"], s[f"{name}_ms_p99"] = d[f"{name}_ms_p50"], d[f"{name}_ms_p99"]
        s[f"{name}_n"] = len(xs)
    s["api_errors_total"] = errors
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=1800.0, help="soak after warm-up, s")
    p.add_argument("--jobs", type=int, default=20, help="concurrent recordings (default 20)")
    p.add_argument("--sample", type=float, default=300.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=60.0, help="before the first sample, s")
    p.add_argument("--quick", action="store_true",
                   help="2 min, a sample every 30 s, 20 s warm-up (make bench)")  # fmt: skip
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.sample, args.warmup = 120.0, 30.0, 20.0

    # SIGTERM (or SIGINT, even when started in the background) ends the soak early with a
    # report of the samples taken so far.
    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    clip = ensure_clip(args.cache_dir)
    load0 = wait_for_quiet()
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-soak-"))
    say(f"work directory {work}")
    n = args.jobs
    engine = Engine(work, "recorder", "recording", n)
    sources = Sources(n, clip, work / "sources")
    samples: list[dict[str, Any]] = []
    client: Client | None = None
    error = None
    try:
        api = engine.start()
        sources.start()
        ids = engine.record_all(sources, "soak")
        client = Client(api, ids)
        client.start()
        say(f"soak: {n} jobs running, API load on; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        client.take()
        ff0 = set(children(engine.worker_pid, "ffmpeg"))
        t0 = time.monotonic()
        samples.append(sample(engine, t0, client, ff0))
        k = 1
        while (now := time.monotonic() - t0) < args.duration:
            nxt = min(k * args.sample, args.duration)
            pause(max(0.0, nxt - now), lambda: (sources.check(), engine.check_worker()))
            samples.append(sample(engine, t0, client, ff0))
            last = samples[-1]
            rss = ", ".join(f"{x} {last.get(f'{x}_rss_mib') or 0:.1f}" for x in MEASURED)
            ffs = f"ffmpeg {last['ffmpeg_n']} ({last['ffmpeg_rss_mib']:.0f} MiB)"
            say(f"soak t={last['t_s']:.0f}s: {rss} MiB RSS; {ffs}")
            k += 1
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {error}")
    except KeyboardInterrupt:
        error = "interrupted"
        say("interrupted; reporting the samples so far")
    finally:
        if client is not None:
            client.done.set()
            client.join(10)
        engine.teardown()
        sources.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    soaked = samples[-1]["t_s"] if samples else 0
    title = (f"Soak: {n} recordings (6 Mbps SRT, mp4 stream copy) + API load (getStat 1/s, "
             f"getById 1/s, getAll 1/5 s) for {soaked / 60:.1f} min after a "
             f"{args.warmup:g} s warm-up")  # fmt: skip
    m = header(title, started, load0)
    growth: dict[str, float | None] = {}
    verdict = []
    if samples:
        cols = (
            samples
            if len(samples) <= 8
            else [*samples[: -1 : max(1, len(samples) // 7)], samples[-1]]
        )
        head = ["metric", *(f"t={c['t_s'] / 60:.1f}m" for c in cols), "growth"]
        rows = [head]
        keys = [(f"{x} {kind} MiB", f"{x}_{kind.lower()}_mib")
                for x in (*MEASURED, "ffmpeg") for kind in ("RSS", "PSS")]  # fmt: skip
        for label, key in keys:
            a, b = samples[0].get(key), samples[-1].get(key)
            g = (b / a - 1) * 100 if a and b is not None else None
            growth[key] = g
            rows.append([label, *(f"{c.get(key) or 0:.1f}" for c in cols),
                         "-" if g is None else f"{g:+.1f} %"])  # fmt: skip
        for label, key in (("postgres processes", "postgres_n"), ("ffmpeg processes", "ffmpeg_n"),
                           ("  replaced since start", "ffmpeg_replaced"),
                           ("getStat p50 / p99 ms", "getStat"), ("getById p50 / p99 ms", "getById"),
                           ("getAll p50 / p99 ms", "getAll"), ("API errors (cumulative)",
                           "api_errors_total"), ("1-min load", "load")):  # fmt: skip
            if key in ("getStat", "getById", "getAll"):
                vals = [f"{c.get(f'{key}_ms_p50') or 0:.1f} / {c.get(f'{key}_ms_p99') or 0:.1f}"
                        if c.get(f"{key}_n") else "-" for c in cols]  # fmt: skip
            else:
                vals = [f"{c.get(key) or 0:g}" for c in cols]
            rows.append([label, *vals, ""])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for i, r in enumerate(rows):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
            if i == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        print()
        for name in MEASURED:
            kind = "pss" if name == "postgres" else "rss"
            g = growth.get(f"{name}_{kind}_mib")
            ok = g is not None and g < TARGET_RSS_GROWTH_PCT
            shown = "-" if g is None else f"{g:+.1f} %"
            verdict.append(f"{name}: {kind.upper()} growth {shown} "
                           f"(target < {TARGET_RSS_GROWTH_PCT:g} %): "
                           f"{'MET' if ok else 'NOT met'}")  # fmt: skip
        g = growth.get("ffmpeg_rss_mib")
        verdict.append(f"FFmpeg total: RSS growth {'-' if g is None else f'{g:+.1f} %'}")
        for line in verdict:
            print(line)
        if client is not None:
            print(f"getStat answers with fewer rows than jobs: {client.short_getstat}")
    if error:
        print(f"\nFAILED / cut short: {error} (soaked {soaked / 60:.1f} min)")
    save_json(args.json, {
        "date": started.isoformat(timespec="seconds"),
        "command": "uv run python bench/soak.py " + " ".join(sys.argv[1:]), "jobs": n,
        "duration_s": args.duration, "soaked_s": soaked, "warmup_s": args.warmup,
        "sample_s": args.sample, "machine": m, "clip": clip.name, "load_start": load0,
        "samples": samples, "growth_pct": growth, "verdict": verdict, "error": error,
        "short_getstat": client.short_getstat if client is not None else None,
    })  # fmt: skip
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
