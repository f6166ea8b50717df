"""Failover: a recorder running N recordings is SIGKILLed (crash) or SIGTERMed (drain); how long
until each job runs on the other recorder, and how much media the files miss.

nats-server + FerretDB + the API + recorder-1 (``_common.Engine``; ``REELHOUSE_NODE_ID`` set, and
``REELHOUSE_NODE_TTL_S``, the live plane's heartbeat TTL, per scenario for every service). N
copy-only SRT listener sources loop the 6 Mbps 1080p30 clip of the density benchmarks; N mp4
recording jobs (the seed's archive, stream copy, audio copy; seamless, the default) are created
while only recorder-1 runs, and once all report progress recorder-2 is started with the same
settings. After a warm-up recorder-1 gets the signal, and the script reads the jobs from MongoDB
every 0.1 s:

* ``claimed``: ``runtime.node == "recorder-2"`` (the new owner took the owner key and wrote it);
* ``running``: ... and ``runtime.state == "running"`` (its FFmpeg reports progress).

Times are from the signal. Then the jobs record on for a few seconds and are stopped; the session
of each job is joined into one file whose record carries ``integrity.gaps`` (media the wall clock
says is missing between parts, reported from 1 s); the sum of a job's gaps is its media gap.

Sources (``--source``): ``srt`` (default) or ``udp``; an FFmpeg SRT listener keeps a dead
reader's connection until SRT's peer idle timeout (5 s), so with ``srt`` the media gap includes
the source's own recovery; ``udp`` measures the engine's failover alone.

Scenarios are ``kill-<ttl s>`` (SIGKILL: the FFmpeg children die through PDEATHSIG, the node's
heartbeat key expires after the TTL and recorder-2 takes the owner keys over) and ``term-<ttl s>``
(SIGTERM: graceful drain releases the owner keys at once and hints the peer). Before the live
plane (2026-12-02 and earlier results) the number was the MongoDB lease, ``REELHOUSE_LEASE_S``.

    uv run python bench/failover.py [--jobs 10] [--scenarios kill-2,term-2]
        [--repeat 3] [--quick] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Engine,
    Sources,
    UdpSources,
    add_output_args,
    aggregate,
    children,
    ensure_clip,
    fmt,
    header,
    loadavg,
    pause,
    save_json,
    say,
    table,
    tail,
    wait_for,
    wait_for_quiet,
)

TARGET_CRASH_GAP_S = 8.0
TARGET_DRAIN_GAP_S = 2.0


def run(scenario: str, args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    kind, lease, *probe = scenario.split("-")  # kill-15, term-6, term-6-p500 (probe 500 ms)
    sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
    n = args.jobs
    env = {"REELHOUSE_NODE_TTL_S": lease, "REELHOUSE_NODE_ID": "recorder-1"}
    if probe:
        env["REELHOUSE_PROBE_MS"] = probe[0].removeprefix("p")
    engine = Engine(work, "recorder", "recording", n, env_extra=env)
    kinds = {"srt": Sources, "udp": UdpSources}
    sources = kinds[args.source](n, clip, work / "sources")
    m: dict[str, Any] = {"load_start": loadavg()}
    try:
        api = engine.start()
        db = engine.mongo()
        sources.start()
        say(f"{scenario}: creating {n} jobs on recorder-1")
        ids = engine.record_all(sources, "failover")
        engine.add_worker("recorder-2", {"REELHOUSE_NODE_ID": "recorder-2"})
        rec2 = engine.services["recorder-2"]

        def registered() -> Any:
            if rec2.poll() is not None:
                raise RuntimeError(f"recorder-2 exited: {tail(engine.logs['recorder-2'])}")
            return db.nodes.find_one({"_id": "recorder-2"})

        try:
            wait_for(registered, timeout=120, what="recorder-2 to register", interval=0.5)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; log tail:\n{tail(engine.logs['recorder-2'])}") from None
        say(f"{scenario}: recorder-2 up; warm-up {args.warmup:g} s")
        pause(args.warmup, sources.check)
        oids = [__import__("bson").ObjectId(j) for j in ids]
        docs = list(db.recordings.find({"_id": {"$in": oids}}, {"runtime": 1}))
        on1 = sum(1 for d in docs if (d.get("runtime") or {}).get("node") == "recorder-1")
        if on1 != n:
            raise RuntimeError(f"only {on1} of {n} jobs on recorder-1 before the signal")

        rec1 = engine.services["recorder"]
        ff1 = children(rec1.pid, "ffmpeg")
        say(f"{scenario}: {signal.Signals(sig).name} to recorder-1 ({len(ff1)} ffmpeg)")
        t0 = time.monotonic()
        os.kill(rec1.pid, sig)
        claimed: dict[str, float] = {}
        running: dict[str, float] = {}
        rec1_exit = None
        deadline = t0 + float(lease) * 2 + 60
        while len(running) < n and time.monotonic() < deadline:
            sources.check()
            now = time.monotonic() - t0
            if rec1_exit is None and rec1.poll() is not None:
                rec1_exit = now
            for d in db.recordings.find({"_id": {"$in": oids}}, {"runtime": 1}):
                rt, j = d.get("runtime") or {}, str(d["_id"])
                if rt.get("node") == "recorder-2":
                    claimed.setdefault(j, now)
                    if rt.get("state") == "running":
                        running.setdefault(j, now)
            time.sleep(0.1)
        if rec1_exit is None:
            rec1.wait(30)
            rec1_exit = time.monotonic() - t0
        old_ff_gone = not any(Path(f"/proc/{p}").exists() for p in ff1)
        say(f"{scenario}: {len(running)}/{n} running on recorder-2; recording on {args.after:g} s")
        pause(args.after, sources.check)

        say(f"{scenario}: stopping the jobs; waiting for the joined files")
        for j in ids:
            api.call("POST", "/api/recording/stop", {"id": j})

        def joined() -> list[dict[str, Any]] | None:
            sources.check()
            files = list(db.files.find({"entity_id": {"$in": ids}}))
            done = [f for f in files if f.get("status") == "ready" and f.get("integrity")]
            busy = [f for f in files if f.get("status") in ("recording", "processing")]
            return done if not busy and len({f["entity_id"] for f in done}) == n else None

        try:
            files = wait_for(joined, timeout=120, what="every job's joined file", interval=0.5)
        except TimeoutError:
            files = [f for f in db.files.find({"entity_id": {"$in": ids}})
                     if f.get("integrity")]  # fmt: skip
            m["files_problem"] = "not every job has a joined file with integrity after 120 s"
            say(f"{scenario}: {m['files_problem']}")
        gap_s: dict[str, float] = {}
        parts: dict[str, int] = {}
        for f in files:
            integ = f["integrity"]
            j = f["entity_id"]
            gap_s[j] = (
                gap_s.get(j, 0.0) + sum(g["duration_ms"] for g in integ.get("gaps", [])) / 1e3
            )
            parts[j] = parts.get(j, 0) + int(integ.get("parts", 1))
            if integ.get("join_failed"):
                m.setdefault("join_failed", []).append(integ["join_failed"])
        claim_v, run_v, gap_v = list(claimed.values()), list(running.values()), list(gap_s.values())
        m.update({
            "jobs": n, "ttl_s": float(lease), "signal": signal.Signals(sig).name,
            "recorder1_exit_s": rec1_exit, "old_ffmpeg_gone": old_ff_gone,
            "moved": len(running),
            "claimed_s_median": statistics.median(claim_v) if claim_v else None,
            "claimed_s_max": max(claim_v) if claim_v else None,
            "running_s_median": statistics.median(run_v) if run_v else None,
            "running_s_min": min(run_v) if run_v else None,
            "running_s_max": max(run_v) if run_v else None,
            "gap_s_median": statistics.median(gap_v) if gap_v else None,
            "gap_s_min": min(gap_v) if gap_v else None,
            "gap_s_max": max(gap_v) if gap_v else None,
            "jobs_with_file": len(gap_s), "parts_median": statistics.median(parts.values())
            if parts else None, "source_relaunches": sources.relaunches,
            "per_job": {j: {"claimed_s": claimed.get(j), "running_s": running.get(j),
                            "gap_s": gap_s.get(j), "parts": parts.get(j)} for j in ids},
            "load_end": loadavg(),
        })  # fmt: skip
        if len(running) < n:
            m["problem"] = f"only {len(running)} of {n} jobs ran on recorder-2 in time; " + tail(
                engine.logs["recorder-2"], 10
            )
        return m
    finally:
        engine.teardown()
        sources.stop()


ROWS: list[tuple[str, str, str]] = [
    ("jobs moved to recorder-2", "moved", "{:.0f}"),
    ("recorder-1 gone after signal, s", "recorder1_exit_s", "{:.2f}"),
    ("claimed by recorder-2, median job, s", "claimed_s_median", "{:.2f}"),
    ("claimed by recorder-2, last job, s", "claimed_s_max", "{:.2f}"),
    ("running on recorder-2, first job, s", "running_s_min", "{:.2f}"),
    ("running on recorder-2, median job, s", "running_s_median", "{:.2f}"),
    ("running on recorder-2, last job, s", "running_s_max", "{:.2f}"),
    ("media gap in file, smallest, s", "gap_s_min", "{:.2f}"),
    ("media gap in file, median job, s", "gap_s_median", "{:.2f}"),
    ("media gap in file, largest, s", "gap_s_max", "{:.2f}"),
    ("parts per joined file (median)", "parts_median", "{:.0f}"),
    ("jobs with a joined file", "jobs_with_file", "{:.0f}"),
    ("1-min load at start", "load_start", "{:.2f}"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=10, help="recordings on recorder-1 (default 10)")
    p.add_argument("--scenarios", default="kill-2,term-2",
                   help="comma-separated kill-<ttl s> / term-<ttl s>, optionally "
                        "-p<probe ms> (REELHOUSE_PROBE_MS)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario (median, min-max)")
    p.add_argument("--source", choices=("srt", "udp"), default="srt",
                   help="srt: FFmpeg SRT listeners, which notice a dead reader only after SRT's "
                        "5 s peer idle timeout and then serve the next one; udp: senders to the "
                        "job's port, which the new reader binds at once (the engine's own "
                        "failover, without the source's)")  # fmt: skip
    p.add_argument("--warmup", type=float, default=10.0, help="recording before the signal, s")
    p.add_argument("--after", type=float, default=5.0, help="recording after the move, s")
    p.add_argument("--quick", action="store_true",
                   help="3 jobs, kill-2 and term-2 once, 5 s warm-up (make bench)")  # fmt: skip
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.scenarios, args.repeat, args.warmup, args.after = (
            3,
            "kill-2,term-2",
            1,
            5,
            3,
        )
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]

    clip = ensure_clip(args.cache_dir)
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-failover-"))
    say(f"work directory {work}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    errors: dict[str, str] = {}
    load0 = None
    try:
        for r in range(args.repeat):
            for sc in scenarios:
                load = wait_for_quiet()
                load0 = load if load0 is None else load0
                d = work / f"{sc}-{r}"
                d.mkdir()
                try:
                    runs[sc].append(run(sc, args, clip, d))
                    res = runs[sc][-1]
                    say(f"{sc} run {r}: running max {fmt(res.get('running_s_max'), '{:.2f}')} s,"
                        f" gap max {fmt(res.get('gap_s_max'), '{:.2f}')} s")  # fmt: skip
                except Exception as exc:
                    errors[f"{sc}-{r}"] = f"{type(exc).__name__}: {exc}"
                    say(f"{sc} run {r} FAILED: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    results = {}
    for sc, rs in runs.items():
        if rs:
            flat = [{k: v for k, v in x.items() if k != "per_job"} for x in rs]
            results[sc] = aggregate(flat) if len(flat) > 1 else flat[0]
    title = (f"Failover: {args.jobs} recordings on recorder-1, SIGKILL (kill-<ttl>) or SIGTERM "
             f"drain (term-<ttl>), recorder-2 takes over; {args.repeat} run(s) per scenario; "
             f"times from the signal")  # fmt: skip
    m = header(title, started, load0)
    if results:
        print(table(results, ROWS))
    lines = []
    for sc, res in results.items():
        gap = res.get("gap_s_max")
        gmax = gap["max"] if isinstance(gap, dict) else gap
        target = TARGET_CRASH_GAP_S if sc.startswith("kill") else TARGET_DRAIN_GAP_S
        met = gmax is not None and gmax < target
        lines.append(f"{sc}: largest media gap of any job in any run {fmt(gmax, '{:.2f}')} s, "
                     f"target < {target:g} s: {'MET' if met else 'NOT met'}")  # fmt: skip
        for x in runs[sc]:
            for key in ("problem", "files_problem", "join_failed"):
                if x.get(key):
                    lines.append(f"{sc}: {key}: {x[key]}")
    print()
    for line in lines:
        print(line)
    for key, err in errors.items():
        print(f"\n{key} FAILED:\n{err}")
    save_json(args.json, {
        "date": started.isoformat(timespec="seconds"),
        "command": "uv run python bench/failover.py " + " ".join(sys.argv[1:]),
        "jobs": args.jobs, "scenarios": scenarios, "repeat": args.repeat,
        "warmup_s": args.warmup, "after_s": args.after, "machine": m, "clip": clip.name,
        "results": results, "runs": runs, "verdicts": lines, "errors": errors,
    })  # fmt: skip
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
