"""Restream destinations: CPU per destination of a multi-destination restream, split vs tee.

One restream job (the seed's "SRT bridge to another SRT destination", stream copy, or with
``--transcode`` also libx264 veryfast at 640x360 1 Mbit/s, audio copied) from one SRT source
(``_common.Sources``: the density benchmarks' 6 Mbit/s 1080p30 clip in a loop) to K SRT listener
receivers (``restream_density.Receivers``), for each K of ``--destinations`` (default 1,2,4), in
two modes, each with its own engine (nats-server, FerretDB, the API, one restreamer):

* ``split``: the ingest service runs too (its Go data plane ``reelhouse-ingest`` from
  ``.cache/bin``, the relay SRT server on a free ``REELHOUSE_INGEST_RELAY_PORT``), so a job of
  K >= 2 destinations runs one relay FFmpeg (input, processing once, MPEG-TS into the relay
  server) and one FFmpeg per destination reading it back from the fan-out;
* ``tee``: no ingest service, so the same job runs one FFmpeg with the tee muxer.

K = 1 is the single-process path in both (``runtime.mode: single``): the baseline. The mode is
read from ``POST /api/restream/getById`` (``runtime.mode``) and must be the expected one.

Per (mode, K), after a warm-up, over a window: CPU % (utime + stime from ``/proc/<pid>/stat``;
100 % = one core) of the restreamer's FFmpeg children (relay + destinations, or the tee
process), of the ingest data plane process and of the restreamer's Python process; their sum
("pipeline") in total and per destination; the ingest service's Python process, the API,
nats-server, FerretDB, the source and the receivers separately. A broken pipeline cannot pass
as cheap: every receiver's byte count must grow over the window, every destination must be
"sending" in getStat at every poll (every 3 s), in split mode every destination's own
``bitrate_kbits`` in getStat must be > 0 at every poll, and no FFmpeg may be replaced during the
window. Between steps the job is stopped (``/api/restream/stop``) and the script waits until
the restreamer has no FFmpeg child.

    uv run python bench/destinations.py [--destinations 1,2,4] [--modes split,tee]
        [--window 30] [--warmup 10] [--transcode | --processing copy,transcode] [--quick]
        [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import statistics
import sys
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DATAPLANE,
    Engine,
    Sources,
    Tracked,
    add_output_args,
    children,
    cmdline,
    ensure_clip,
    header,
    ingest_env,
    loadavg,
    parse_us,
    pause,
    run_window,
    save_json,
    say,
    wait_for,
    wait_for_quiet,
)
from restream_density import Receivers, ReceiverWatch, job_payload, sending, window_bytes
from support.media import free_port

TRANSCODE = {
    "video_transcoding": "libx264",
    "preset": "veryfast",
    "output_video_bitrate": 1000,
    "frame_width": 640,
    "frame_height": 360,
}


# --------------------------------------------------------------------------------------------
# The engine of one mode
# --------------------------------------------------------------------------------------------


def relay_announced(nats_url: str, prefix: str = "reelhouse") -> bool:
    """Whether the ingest node's relay announcement is in the live plane."""
    import nats

    from reelhouse.common.subjects import Subjects

    subjects = Subjects(prefix)

    async def get() -> bool:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(subjects.live_bucket())
            try:
                entry = await kv.get(subjects.live_ingest_relay())
            except Exception:
                return False
            return bool(entry.value)
        finally:
            await nc.close()

    return asyncio.run(get())


class Rig:
    """The engine of one mode (with the ingest service for ``split``) and the one source."""

    def __init__(self, mode: str, work: Path, clip: Path) -> None:
        self.mode, self.work, self.clip = mode, work, clip
        env: dict[str, str] = {}
        if mode == "split":
            self.relay_port = free_port("udp")
            env = ingest_env(
                srt_port=free_port("udp"), rtmp_port=free_port("tcp"),
                fanout_port=free_port("udp"), relay_port=self.relay_port,
            )  # fmt: skip
        self.engine = Engine(work, "restreamer", "restream", 1, env_extra=env)
        self.source: Sources | None = None

    @property
    def api(self) -> Any:
        assert self.engine.api is not None
        return self.engine.api

    def start(self) -> None:
        self.engine.start()
        if self.mode == "split":
            self.engine.add_service("ingest")
            wait_for(self.dataplane_pid, timeout=30, what="the ingest data plane process")
            nats_url = self.engine.env["REELHOUSE_NATS_URL"]
            wait_for(lambda: relay_announced(nats_url), timeout=30,
                     what="the ingest relay announced", interval=1.0)  # fmt: skip
        self.source = Sources(1, self.clip, self.work / "sources").start()

    def dataplane_pid(self) -> int | None:
        return self.engine.dataplane_pid()

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        self.engine.teardown()


def job_body(k: int, src: str, receivers: Receivers, transcode: bool) -> dict[str, Any]:
    """The seed's SRT→SRT bridge with one SRT output per receiver (and the transcode)."""
    body = job_payload(0, src, receivers.items[0].url)
    body["restream_name"] = f"destinations {k}"
    body["input"]["entity_name"] = body["restream_name"]
    first = body["output"]
    body["output"] = [
        {**first, "output_stream_url": r.url, "entity_name": f"{body['restream_name']} #{i}"}
        for i, r in enumerate(receivers.items)
    ]
    if transcode:
        body["transcoding"].update(TRANSCODE)
    return body


def expected_mode(mode: str, k: int) -> str:
    return "single" if k == 1 else mode


# --------------------------------------------------------------------------------------------
# One step: K destinations
# --------------------------------------------------------------------------------------------


def role_of(pid: int, read_port: str | None, mode: str) -> str:
    """``relay`` or ``destination`` (reads the fan-out) in split mode, else the mode."""
    if read_port is None:
        return mode
    argv = cmdline(pid)
    url = argv[argv.index("-i") + 1] if "-i" in argv else ""
    return "destination" if f":{read_port}?" in url else "relay"


def first_of_role(roles: dict[int, str]) -> dict[str, int]:
    """One FFmpeg pid per role (the lowest)."""
    out: dict[str, int] = {}
    for pid in sorted(roles):
        out.setdefault(roles[pid], pid)
    return out


def shown(argv: list[str]) -> str:
    """A command line with the relay's per-run SRT passphrase masked."""
    return re.sub(r"passphrase=[^&\s]+", "passphrase=***", " ".join(argv))


def step(rig: Rig, k: int, processing: str, args: argparse.Namespace) -> dict[str, Any]:
    engine, api, source = rig.engine, rig.api, rig.source
    assert source is not None
    label = f"{processing} {rig.mode} K={k}"
    want = expected_mode(rig.mode, k)
    load0 = wait_for_quiet()
    say(f"{label}: starting {k} receivers; 1-min load {load0:.2f}")
    rcv = Receivers(k, rig.clip, rig.work / f"rx-{processing}-{k}").start()
    m: dict[str, Any] = {"processing": processing, "mode": rig.mode, "destinations": k,
                         "load_1min_start": load0}  # fmt: skip

    def check() -> None:
        source.check()
        rcv.check()

    try:
        job = engine.create(job_body(k, source.items[0].url, rcv, processing == "transcode"))

        def flowing(rows: dict[str, dict[str, Any]]) -> bool:
            check()
            row = rows.get(job)
            if not sending(row) or row is None:
                return False
            if not parse_us(row["processData"].get("out_time_ms")):
                return False
            if want == "split" and not all(
                (d.get("bitrate_kbits") or 0) > 0 for d in row["destinations"]
            ):
                return False
            return rcv.all_receiving()

        engine.wait_all(flowing, f"{label}: every destination sending and receiving")
        runtime = api.call("POST", "/api/restream/getById", {"id": job}).get("runtime") or {}
        m["runtime_mode"] = runtime.get("mode")
        if runtime.get("mode") != want:
            raise RuntimeError(f"{label}: runtime.mode is {runtime.get('mode')!r}, not {want!r} "
                               f"({runtime.get('mode_reason')})")  # fmt: skip
        n_ff = k + 1 if want == "split" else 1
        wait_for(lambda: len(engine.ffmpeg()) == n_ff, timeout=20,
                 what=f"{n_ff} ffmpeg children of the restreamer")  # fmt: skip
        say(f"{label}: mode {want}, {n_ff} ffmpeg; warm-up {args.warmup:g} s")
        pause(args.warmup, check)

        read_port = rig.engine.env.get("REELHOUSE_INGEST_FANOUT_PORT") if want == "split" else None
        workers = engine.ffmpeg()
        roles = {pid: role_of(pid, read_port, want) for pid in workers}
        if want == "split" and sorted(roles.values()).count("destination") != k:
            raise RuntimeError(f"{label}: ffmpeg roles {roles}, want {k} destinations")
        services = engine.services
        tracked = [Tracked("ffmpeg", roles[pid], pid) for pid in workers]
        tracked += [Tracked("engine", name, services[name].pid) for name in ("restreamer", "api")]
        tracked += [
            Tracked("engine", "nats-server", engine.nats.proc.pid),  # type: ignore[union-attr]
            Tracked("engine", "ferretdb", engine.fdb.proc.pid),  # type: ignore[union-attr]
        ]
        dp = rig.dataplane_pid()
        if dp is not None:
            tracked += [Tracked("ingest", "dataplane", dp),
                        Tracked("ingest", "ingest", services["ingest"].pid)]  # fmt: skip
        tracked.append(Tracked("source", "source", source.items[0].proc.pid))
        tracked += [Tracked("receiver", f"rx{i}", r.proc.pid) for i, r in enumerate(rcv.items)]
        tracked.append(Tracked("bench", "bench", os.getpid()))
        others0 = {p for p in children(services["restreamer"].pid) if p not in workers}
        rx = ReceiverWatch(rcv)
        relaunch0 = rcv.relaunches
        not_sending: list[int] = []
        dest_kbits: list[list[float]] = [[] for _ in range(k)]
        job_kbits: list[float] = []

        def poll() -> None:
            with contextlib.suppress(OSError, urllib.error.HTTPError):
                row = api.rows().get(job)
                not_sending.append(0 if sending(row) else 1)
                if row:
                    job_kbits.append(float(row["processData"].get("bitrate_kbits") or 0))
                    for i, d in enumerate(row.get("destinations") or []):
                        if i < k:
                            dest_kbits[i].append(float(d.get("bitrate_kbits") or 0))
            rx.poll()

        say(f"{label}: measuring for {args.window:g} s")
        win = run_window(tracked, args.window, every_1s=check, every_3s=poll,
                         output_bytes=lambda: window_bytes(rcv))  # fmt: skip
        poll()
        wall = win["wall_s"]

        def pct(*labels: str, role: str | None = None) -> float:
            return sum(c for t in tracked if (t.label in labels or t.role == role)
                       and (c := t.cpu_pct(wall)) is not None)  # fmt: skip

        ff = [t for t in tracked if t.role == "ffmpeg"]
        m.update(
            wall_s=wall,
            ffmpeg_processes=len(ff),
            ffmpeg_exited=sum(not t.alive_throughout for t in ff),
            ffmpeg_replaced=len(set(workers) ^ set(engine.ffmpeg())),
            ffmpeg_cpu_pct=pct(role="ffmpeg"),
            relay_cpu_pct=pct("relay") if want == "split" else None,
            destination_ffmpeg_cpu_pct_mean=(pct("destination") / k if want == "split" else None),
            dataplane_cpu_pct=pct("dataplane") if dp is not None else None,
            restreamer_cpu_pct=pct("restreamer"),
            ingest_service_cpu_pct=pct("ingest") if dp is not None else None,
            api_cpu_pct=pct("api"),
            nats_cpu_pct=pct("nats-server"),
            ferretdb_cpu_pct=pct("ferretdb"),
            source_cpu_pct=pct("source"),
            receivers_cpu_pct=pct(role="receiver"),
            bench_cpu_pct=pct("bench"),
            host_busy_pct=win["host_busy_pct"],
            other_procs_cpu_pct=win["other_procs_cpu_pct"],
            receiver_relaunches=rcv.relaunches - relaunch0,
            received_mbps_per_destination=win["output_bytes"] * 8 / wall / 1e6 / k,
            polls=len(not_sending),
            polls_not_sending=sum(not_sending),
            job_bitrate_kbits_mean=statistics.fmean(job_kbits) if job_kbits else None,
            destination_kbits_min=(
                min((min(x) for x in dest_kbits if x), default=None) if want == "split" else None
            ),
            destinations_without_kbits=(
                sum(1 for x in dest_kbits if not x or min(x) <= 0) if want == "split" else None
            ),
            restreamer_other_children=sorted(
                {p for p in children(services["restreamer"].pid) if p not in workers} | others0
            ),
            command=" | ".join(
                f"{role}: {shown(cmdline(p))}" for role, p in first_of_role(roles).items()
            ),
        )
        m.update(rx.metrics())
        m["pipeline_cpu_pct"] = (
            m["ffmpeg_cpu_pct"] + m["restreamer_cpu_pct"] + (m["dataplane_cpu_pct"] or 0.0)
        )
        m["pipeline_cpu_pct_per_destination"] = m["pipeline_cpu_pct"] / k
        m["load_1min_end"] = loadavg()
        m["problems"] = problems(m)
        say(f"{label}: pipeline {m['pipeline_cpu_pct']:.1f} % of a core "
            f"({m['pipeline_cpu_pct_per_destination']:.1f} % per destination); "
            f"{'; '.join(m['problems']) or 'pipeline OK'}")  # fmt: skip
        return m
    finally:
        stop: dict[str, Any] = {}
        engine.stop_jobs(stop)
        engine.job_ids.clear()
        m["stop_all_s"] = stop.get("stop_all_s")
        if stop.get("stop_problem"):
            m["stop_problem"] = stop["stop_problem"]
        rcv.stop()


def problems(m: dict[str, Any]) -> list[str]:
    out = []
    if m.get("receivers_without_data"):
        out.append(f"{m['receivers_without_data']} receiver(s) got no data in the window")
    if m.get("polls_not_sending"):
        out.append(f"{m['polls_not_sending']} getStat poll(s) with a destination not sending")
    if m.get("destinations_without_kbits"):
        out.append(f"{m['destinations_without_kbits']} destination(s) with no bitrate in getStat")
    if m.get("ffmpeg_exited") or m.get("ffmpeg_replaced"):
        out.append("an FFmpeg exited or was replaced during the window")
    ratio = m.get("rx_realtime_ratio_min")
    if ratio is None:
        out.append("no media time from the receivers")
    elif ratio < 0.95:
        out.append(f"receivers' worst media/wall {ratio:.3f} < 0.95 (not real time)")
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


def steps_table(steps: list[dict[str, Any]]) -> str:
    rows = [(
        "processing", "mode", "K", "runtime.mode", "FFmpeg procs", "FFmpeg CPU %",
        "relay %", "per-dest FFmpeg %", "data plane %", "restreamer %", "pipeline %",
        "per destination %", "ingest svc %", "receivers %", "dest kbit/s min", "rx Mbit/s each",
        "checks", "load 1m",
    )]  # fmt: skip
    for m in steps:
        rows.append((
            m["processing"], m["mode"], str(m["destinations"]), m.get("runtime_mode") or "-",
            str(m["ffmpeg_processes"]), f(m["ffmpeg_cpu_pct"]), f(m["relay_cpu_pct"]),
            f(m["destination_ffmpeg_cpu_pct_mean"]), f(m["dataplane_cpu_pct"]),
            f(m["restreamer_cpu_pct"]), f(m["pipeline_cpu_pct"]),
            f(m["pipeline_cpu_pct_per_destination"]), f(m["ingest_service_cpu_pct"]),
            f(m["receivers_cpu_pct"]), f(m["destination_kbits_min"], "{:.0f}"),
            f(m["received_mbps_per_destination"], "{:.2f}"),
            "OK" if not m["problems"] else "FAIL",
            f"{m['load_1min_start']:.2f}-{m['load_1min_end']:.2f}",
        ))  # fmt: skip
    return md_table(rows)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y)."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def derived(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per processing: each mode's marginal CPU per destination (slope of the pipeline's CPU
    over K >= 2, where the mode applies), and split minus tee at each K."""
    out: dict[str, Any] = {}
    for proc in dict.fromkeys(m["processing"] for m in steps):
        d: dict[str, Any] = {}
        by = {(m["mode"], m["destinations"]): m for m in steps if m["processing"] == proc}
        for mode in ("split", "tee"):
            pts = [(k, m["pipeline_cpu_pct"]) for (md, k), m in by.items() if md == mode and k > 1]
            d[f"{mode}_marginal_cpu_pct_per_destination"] = slope(sorted(pts))
        ks = sorted({k for _, k in by})
        d["split_minus_tee_cpu_pct"] = {
            str(k): by[("split", k)]["pipeline_cpu_pct"] - by[("tee", k)]["pipeline_cpu_pct"]
            for k in ks
            if ("split", k) in by and ("tee", k) in by
        }
        d["split_minus_tee_cpu_pct_per_destination"] = {
            str(k): v / k for k, v in ((int(k), v) for k, v in d["split_minus_tee_cpu_pct"].items())
        }
        sm = d["split_marginal_cpu_pct_per_destination"]
        tm = d["tee_marginal_cpu_pct_per_destination"]
        d["marginal_difference_cpu_pct"] = sm - tm if sm is not None and tm is not None else None
        out[proc] = d
    return out


def summary_lines(d: dict[str, Any]) -> list[str]:
    lines = []
    for proc, x in d.items():
        diff = ", ".join(f"K={k}: {v:+.1f} %" for k, v in x["split_minus_tee_cpu_pct"].items())
        per = ", ".join(
            f"K={k}: {v:+.1f} %" for k, v in x["split_minus_tee_cpu_pct_per_destination"].items()
        )
        lines.append(
            f"{proc}: marginal CPU per extra destination (slope over K >= 2): split "
            f"{f(x['split_marginal_cpu_pct_per_destination'], '{:.2f}')} %, tee "
            f"{f(x['tee_marginal_cpu_pct_per_destination'], '{:.2f}')} % of a core "
            f"(split - tee {f(x['marginal_difference_cpu_pct'], '{:+.2f}')} %); "
            f"pipeline split - tee: {diff or '-'}; per destination: {per or '-'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ints = lambda s: [int(x) for x in s.split(",") if x != ""]  # noqa: E731
    p.add_argument("--destinations", type=ints, default=[1, 2, 4], help="values of K")
    p.add_argument("--modes", default="split,tee", help="split, tee or both (default)")
    p.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up per step, s")
    p.add_argument(
        "--transcode",
        action="store_true",
        help="also measure the job transcoded (libx264 veryfast, 640x360, 1 Mbit/s): "
        "--processing copy,transcode",
    )
    p.add_argument(
        "--processing", default="copy", help="copy, transcode or copy,transcode (default copy)"
    )
    p.add_argument("--quick", action="store_true",
                   help="K in 1,2; 4 s warm-up, 8 s window (make bench)")  # fmt: skip
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.destinations, args.window, args.warmup = [1, 2], 8.0, 4.0
    modes = [x for x in args.modes.split(",") if x]
    if "split" in modes and not DATAPLANE.exists():
        raise SystemExit(f"{DATAPLANE} is missing: run `make install`")
    processings = [x for x in args.processing.split(",") if x in ("copy", "transcode")]
    if args.transcode and "transcode" not in processings:
        processings.append("transcode")

    clip = ensure_clip(args.cache_dir)
    load0 = wait_for_quiet()
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-destinations-"))
    say(f"work directory {work}")
    steps: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for mode in modes:
            rig = Rig(mode, work / mode, clip)
            try:
                rig.start()
                for processing in processings:
                    for k in args.destinations:
                        try:
                            steps.append(step(rig, k, processing, args))
                        except Exception as exc:
                            errors.append(f"{processing} {mode} K={k}: {type(exc).__name__}: {exc}")
                            say(f"FAILED: {errors[-1]}")
            except Exception as exc:
                errors.append(f"{mode}: {type(exc).__name__}: {exc}")
                say(f"FAILED: {errors[-1]}")
            finally:
                rig.stop()
    except KeyboardInterrupt:
        errors.append("interrupted")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = loadavg()

    title = (
        "Restream destinations: CPU per destination, split (relay + one FFmpeg per destination "
        "through the ingest data plane) vs tee (one FFmpeg); SRT→SRT, 6 Mbit/s 1080p30 source"
    )
    machine = header(title, started, load0)
    print(f"{args.warmup:g} s warm-up, {args.window:g} s window per step; CPU in % of one core; "
          "pipeline = FFmpeg + data plane + restreamer\n")  # fmt: skip
    steps.sort(key=lambda m: (processings.index(m["processing"]), m["destinations"],
                              modes.index(m["mode"])))  # fmt: skip
    if steps:
        print(steps_table(steps))
    d = derived(steps)
    for line in summary_lines(d):
        print(f"\n{line}")
    for m in steps:
        if m["problems"]:
            print(f"\n{m['processing']} {m['mode']} K={m['destinations']}: "
                  + "; ".join(m["problems"]))  # fmt: skip
        if m.get("stop_problem"):
            print(f"\n{m['processing']} {m['mode']} K={m['destinations']}: {m['stop_problem']}")
    for m in steps:
        if m["destinations"] == max(args.destinations):
            print(f"\n{m['processing']} {m['mode']} K={m['destinations']} commands: {m['command']}")
    print(f"\n1-min load at start {load0:.2f}, at end {load1:.2f}")
    for e in errors:
        print(f"\nFAILED: {e}")
    save_json(args.json, {
        "date": started.isoformat(timespec="seconds"),
        "command": "uv run python bench/destinations.py " + " ".join(sys.argv[1:]),
        "machine": machine, "clip": clip.name, "load_start": load0, "load_end": load1,
        "warmup_s": args.warmup, "window_s": args.window, "transcode": TRANSCODE,
        "steps": steps, "derived": d, "errors": errors,
    })  # fmt: skip
    failed = errors or any(m["problems"] for m in steps)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
