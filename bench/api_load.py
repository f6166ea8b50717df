"""API under load: ``getStat`` with 100 active jobs, ``getAll`` with 1,000 jobs stored, and
create/stop pairs; p50/p99 latency and requests/s from a loopback load generator.

The load generator is this script: ``httpx.AsyncClient`` (HTTP/1.1 keep-alive, one connection
per worker) with C concurrent workers, each sending its next request as soon as the last one is
answered, for a fixed time, against the API subprocess on 127.0.0.1. It runs on the same 2 cores
as the API, so throughput is what the machine does with both; the generator's own CPU is
reported. Two engines (``_common.Engine``: nats-server + FerretDB + the API + one recorder):

* **getStat**: N (default 100) active mp4 recordings (stream copy, audio copy) of N copy-only
  SRT listener sources looping a *small* clip (320x180 15 fps H.264 ~150 kbit/s + AAC 32k,
  ``_common.ensure_small_clip``) so that 2 x N FFmpeg fit on 2 cores; once every job is in
  ``getStat``, ``POST /api/recording/getStat`` at concurrency 1 (a dashboard) and C.
* **getAll**: a fresh engine, M (default 1,000) jobs created through the API with
  ``active: false`` (the create latency is reported too), then ``getAll`` (no limit: all M jobs,
  populated with their input and files) at concurrency 1 and 4.
* **create/stop**: on the same engine, W workers each loop ``create`` (``active: true``, the
  source an SRT port nobody listens on, so the recorder claims it and its FFmpeg keeps retrying)
  then ``stop`` of that job; latency of each call and pairs/s. Afterwards: how long until the
  recorder has no FFmpeg left, and whether any job created here is still active.

    uv run python bench/api_load.py [--stat-jobs 100] [--all-jobs 1000] [--duration 20]
        [--concurrency 8] [--quick] [--json out.json]

Every process this script starts gets PDEATHSIG=KILL (``setpriv``) and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Engine,
    UdpSources,
    add_output_args,
    children,
    cpu_seconds,
    distribution,
    ensure_small_clip,
    free_udp_port,
    header,
    loadavg,
    pause,
    recording_job,
    save_json,
    say,
    wait_for,
    wait_for_quiet,
)

TARGET_GETSTAT_P99_MS = 20.0

Step = Callable[[httpx.AsyncClient, int], Awaitable[dict[str, float]]]


async def load(
    engine: Engine, concurrency: int, duration: float, step: Step, warmup: float = 1.0
) -> dict[str, Any]:
    """``concurrency`` workers run ``step`` (which returns {call: seconds}) back to back for
    ``warmup`` + ``duration`` s; only calls that start after the warm-up are counted."""
    assert engine.api is not None
    base, token = engine.api.base, engine.api.token
    lat: dict[str, list[float]] = {}
    errors = 0
    pids = {"api": engine.services["api"].pid, "ferretdb": engine.fdb.proc.pid,  # type: ignore[union-attr]
            "bench": os.getpid()}  # fmt: skip
    t_start = time.monotonic() + warmup
    t_end = t_start + duration
    cpu0: dict[str, float | None] = {}

    async def worker(w: int) -> None:
        nonlocal errors
        headers = {"x-access-token": token, "content-type": "application/json"}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                     timeout=60) as client:  # fmt: skip
            k = 0
            while (t0 := time.monotonic()) < t_end:
                try:
                    got = await step(client, w * 1_000_000 + k)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    errors += 1
                    if errors <= 3:
                        say(f"load: request failed: {exc!r}")
                    continue
                finally:
                    k += 1
                if t0 >= t_start:
                    for name, s in got.items():
                        lat.setdefault(name, []).append(s)

    async def mark() -> None:
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        cpu0.update({k: cpu_seconds(p) for k, p in pids.items()})

    await asyncio.gather(mark(), *(worker(w) for w in range(concurrency)))
    wall = time.monotonic() - t_start
    out: dict[str, Any] = {"concurrency": concurrency, "duration_s": wall, "errors": errors}
    for name, xs in lat.items():
        out.update(distribution([x * 1000 for x in xs], f"{name}_ms"))
        out[f"{name}_per_s"] = len(xs) / wall
    for k, p in pids.items():
        c1 = cpu_seconds(p)
        if c1 is not None and cpu0.get(k) is not None:
            out[f"cpu_pct_{k}"] = (c1 - cpu0[k]) / wall * 100  # type: ignore[operator]
    return out


async def post(client: httpx.AsyncClient, path: str, body: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    r = await client.post(path, json=body)
    dt_s = time.monotonic() - t0
    r.raise_for_status()
    return r.json(), dt_s


def phase_getstat(args: argparse.Namespace, clip: Path, work: Path) -> dict[str, Any]:
    n = args.stat_jobs
    engine = Engine(work, "recorder", "recording", n)
    sources = UdpSources(n, clip, work / "sources")
    out: dict[str, Any] = {"jobs": n, "load_start": loadavg()}
    try:
        api = engine.start()
        say(f"getStat: starting {n} small sources")
        sources.start()
        # Ramp up 10 jobs at a time, each batch reporting progress before the next: 100 FFmpeg
        # starting (and probing) at once on 2 cores time out on their SRT connects and retry.
        say(f"getStat: creating {n} active recordings, 10 at a time")
        engine.record_all(sources, "load", batch=10)
        say("getStat: all jobs in getStat; 5 s settle")
        pause(5, sources.check)
        rows = api.call("POST", "/api/recording/getStat", {})
        out["rows_in_getstat"] = len(rows)
        out["getstat_bytes"] = len(str(rows).encode())
        out["ffmpeg"] = len(engine.ffmpeg())

        async def step(client: httpx.AsyncClient, k: int) -> dict[str, float]:
            got, s = await post(client, "/api/recording/getStat", {})
            if len(got) < n:
                raise ValueError(f"getStat returned {len(got)} rows, not {n}")
            return {"getStat": s}

        for c in (1, args.concurrency):
            say(f"getStat: {n} jobs, concurrency {c}, {args.duration:g} s")
            out[f"c{c}"] = asyncio.run(load(engine, c, args.duration, step))
            sources.check()
        out["relaunched_sources"] = sources.relaunches
        out["ffmpeg_end"] = len(engine.ffmpeg())
        out["load_end"] = loadavg()
        return out
    finally:
        engine.stop_jobs(out)
        engine.teardown()
        sources.stop()


def phase_getall_createstop(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    m = args.all_jobs
    engine = Engine(work, "recorder", "recording", 40)
    res: dict[str, dict[str, Any]] = {}
    nobody = f"srt://127.0.0.1:{free_udp_port(set())}"
    try:
        engine.start()
        res["create"] = {"load_start": loadavg()}
        say(f"getAll: creating {m} inactive jobs (concurrency 4)")
        res["create"].update(asyncio.run(_creates(engine, m, nobody)))
        count = engine.api.call("POST", "/api/recording/getCount", {})["count"]  # type: ignore[union-attr]
        res["getAll"] = {"jobs_stored": count, "load_start": loadavg()}

        async def getall(client: httpx.AsyncClient, k: int) -> dict[str, float]:
            got, s = await post(client, "/api/recording/getAll", {})
            if len(got) < m:
                raise ValueError(f"getAll returned {len(got)} jobs, not {m}")
            return {"getAll": s}

        for c in (1, 4):
            say(f"getAll: {count} jobs, concurrency {c}, {args.duration:g} s")
            res["getAll"][f"c{c}"] = asyncio.run(load(engine, c, args.duration, getall))
        body = engine.api.call("POST", "/api/recording/getAll", {})  # type: ignore[union-attr]
        res["getAll"]["response_bytes"] = len(json.dumps(body).encode())

        created: list[str] = []

        async def pair(client: httpx.AsyncClient, k: int) -> dict[str, float]:
            job, s1 = await post(client, "/api/recording/create",
                                 recording_job(k, nobody, name="pair", active=True))  # fmt: skip
            created.append(job["id"])
            _, s2 = await post(client, "/api/recording/stop", {"id": job["id"]})
            return {"create": s1, "stop": s2, "pair": s1 + s2}

        w = args.pair_workers
        res["create_stop"] = {"load_start": loadavg()}
        say(f"create/stop: {w} workers, {args.duration:g} s")
        res["create_stop"][f"c{w}"] = asyncio.run(load(engine, w, args.duration, pair))
        t0 = time.monotonic()
        rec = engine.worker_pid
        try:
            wait_for(lambda: not children(rec, "ffmpeg"), timeout=60, what="recorder's ffmpeg "
                     "to end", interval=0.2)  # fmt: skip
            res["create_stop"]["ffmpeg_gone_after_s"] = time.monotonic() - t0
        except TimeoutError:
            res["create_stop"]["ffmpeg_left_after_60s"] = len(children(rec, "ffmpeg"))
        db = engine.mongo()
        from bson import ObjectId

        oids = [ObjectId(j) for j in created]
        res["create_stop"]["pairs_total"] = len(created)
        res["create_stop"]["still_active"] = db.recordings.count_documents(
            {"_id": {"$in": oids}, "active": True}
        )
        res["create_stop"]["still_owned"] = db.recordings.count_documents(
            {"_id": {"$in": oids}, "runtime.node": {"$exists": True, "$ne": None}}
        )
        res["create_stop"]["load_end"] = loadavg()
        return res
    finally:
        engine.teardown()


async def _creates(engine: Engine, m: int, url: str) -> dict[str, Any]:
    """Create ``m`` inactive jobs with 4 workers; the creates' latency and the time it took."""
    assert engine.api is not None
    headers = {"x-access-token": engine.api.token, "content-type": "application/json"}
    lat: list[float] = []
    queue = list(range(m))
    t0 = time.monotonic()

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=engine.api.base, headers=headers,  # type: ignore[union-attr]
                                     timeout=60) as client:  # fmt: skip
            while queue:
                k = queue.pop()
                _, s = await post(client, "/api/recording/create",
                                  recording_job(k, url, name="stored", active=False))  # fmt: skip
                lat.append(s)

    await asyncio.gather(*(worker() for _ in range(4)))
    took = time.monotonic() - t0
    return {"concurrency": 4, "created": len(lat), "seconds": took, "per_s": len(lat) / took,
            **distribution([x * 1000 for x in lat], "create_inactive_ms")}  # fmt: skip


def fmt_ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stat-jobs", type=int, default=100, help="active jobs for getStat")
    p.add_argument("--all-jobs", type=int, default=1000, help="stored jobs for getAll")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per load step")
    p.add_argument("--concurrency", type=int, default=8, help="getStat workers (besides 1)")
    p.add_argument("--pair-workers", type=int, default=4, help="create/stop workers")
    p.add_argument("--phase", choices=("getstat", "getall", "both"), default="both",
                   help="getstat, or getall (getAll and create/stop), or both")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="20 active jobs, 200 stored, 5 s per step (make bench)")  # fmt: skip
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.stat_jobs, args.all_jobs, args.duration = 20, 200, 5.0

    clip = ensure_small_clip(args.cache_dir)
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="reelhouse-apiload-"))
    say(f"work directory {work}")
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    load0 = None
    try:
        if args.phase in ("getstat", "both"):
            load0 = wait_for_quiet()
            (work / "getstat").mkdir()
            try:
                results["getStat"] = phase_getstat(args, clip, work / "getstat")
            except Exception as exc:
                errors["getStat"] = f"{type(exc).__name__}: {exc}"
                say(f"getStat FAILED: {exc}")
        if args.phase in ("getall", "both"):
            load = wait_for_quiet()
            load0 = load if load0 is None else load0
            (work / "getall").mkdir()
            try:
                results.update(phase_getall_createstop(args, work / "getall"))
            except Exception as exc:
                errors["getAll"] = f"{type(exc).__name__}: {exc}"
                say(f"getAll / create-stop FAILED: {exc}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    title = (f"API under load: getStat with {args.stat_jobs} active jobs, getAll with "
             f"{args.all_jobs} stored jobs, create/stop pairs; loopback httpx load generator, "
             f"{args.duration:g} s per step")  # fmt: skip
    m = header(title, started, load0)
    rows = [("request", "jobs", "conc.", "n", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
             "errors", "CPU% api", "CPU% ferretdb", "CPU% generator")]  # fmt: skip

    def add(name: str, jobs: Any, r: dict[str, Any], key: str) -> None:
        rows.append((name, str(jobs), str(r["concurrency"]), str(r.get(f"{key}_ms_n", 0)),
                     fmt_ms(r.get(f"{key}_per_s")), fmt_ms(r.get(f"{key}_ms_p50")),
                     fmt_ms(r.get(f"{key}_ms_p95")), fmt_ms(r.get(f"{key}_ms_p99")),
                     fmt_ms(r.get(f"{key}_ms_max")), str(r.get("errors", 0)),
                     fmt_ms(r.get("cpu_pct_api")), fmt_ms(r.get("cpu_pct_ferretdb")),
                     fmt_ms(r.get("cpu_pct_bench"))))  # fmt: skip

    gs = results.get("getStat", {})
    for k in sorted((k for k in gs if k.startswith("c")), key=lambda k: int(k[1:])):
        add("getStat", gs["jobs"], gs[k], "getStat")
    cr = results.get("create", {})
    if cr:
        ci = "create_inactive_ms"
        rows.append(("create (active: false)", "0->" + str(cr.get("created")), "4",
                     str(cr.get("created")), fmt_ms(cr.get("per_s")),
                     *(fmt_ms(cr.get(f"{ci}_{q}")) for q in ("p50", "p95", "p99", "max")),
                     "0", "-", "-", "-"))  # fmt: skip
    ga = results.get("getAll", {})
    for k in sorted(
        (k for k in ga if k.startswith("c") and k[1:].isdigit()), key=lambda k: int(k[1:])
    ):
        add("getAll", ga["jobs_stored"], ga[k], "getAll")
    cs = results.get("create_stop", {})
    for k in [k for k in cs if k.startswith("c") and k[1:].isdigit()]:
        for key in ("pair", "create", "stop"):
            add(f"create+stop: {key}", "-", cs[k], key)
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    verdict = None
    if gs.get("c1"):
        p99 = gs["c1"].get("getStat_ms_p99")
        met = p99 is not None and p99 < TARGET_GETSTAT_P99_MS
        verdict = (
            f"target getStat p99 < {TARGET_GETSTAT_P99_MS:g} ms at {gs['jobs']} jobs "
            f"(concurrency 1): {'MET' if met else 'NOT met'} (p99 {fmt_ms(p99)} ms)"
        )
        print(verdict)
        print(f"getStat: {gs.get('rows_in_getstat')} rows, {gs.get('getstat_bytes')} bytes; "
              f"{gs.get('ffmpeg')} recording FFmpeg; sources relaunched "
              f"{gs.get('relaunched_sources')}")  # fmt: skip
    if ga:
        print(f"getAll: {ga.get('jobs_stored')} jobs, response {ga.get('response_bytes')} bytes")
    if cs:
        print(f"create/stop: {cs.get('pairs_total')} pairs; recorder's FFmpeg all gone "
              f"{fmt_ms(cs.get('ffmpeg_gone_after_s'))} s after the load "
              f"(left after 60 s: {cs.get('ffmpeg_left_after_60s', 0)}); jobs still active "
              f"{cs.get('still_active')}, still owned by a node "
              f"{cs.get('still_owned')}")  # fmt: skip
    for key, err in errors.items():
        print(f"\n{key} FAILED:\n{err}")
    save_json(args.json, {
        "date": started.isoformat(timespec="seconds"),
        "command": "uv run python bench/api_load.py " + " ".join(sys.argv[1:]),
        "stat_jobs": args.stat_jobs, "all_jobs": args.all_jobs, "duration_s": args.duration,
        "concurrency": args.concurrency, "pair_workers": args.pair_workers, "machine": m,
        "clip": clip.name, "results": results, "verdict": verdict, "errors": errors,
    })  # fmt: skip
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
