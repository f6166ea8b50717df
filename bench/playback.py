"""Playback of a 10-minute range across 60 segments (issue 24): time to first byte and CPU.

60 MPEG-TS segments of 10 s (640x360, 25 fps, a keyframe a second, AAC; cut by FFmpeg from a
lavfi source once and cached under ~/.cache/reelhouse/bench/) are registered as a split
recording's file records with one 5 s gap after the 30th. The API runs in this process
(uvicorn, real HTTP) against a local nats-server and FerretDB. For each format (mp4, ts, and
mp4 precise) the script asks getPlaybackUrl for the whole 10-minute range and measures, over
``--runs`` runs: the time from the GET to the first body byte, the time to the last byte, and
the CPU the API process and its FFmpeg used (from /proc), as % of one core over the transfer.
Target: time to first byte ≤ 0.5 s.

    uv run python bench/playback.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from support import infra  # noqa: E402
from support.playback import cut_segments, register_segments  # noqa: E402
from support.seeds import recording_payload  # noqa: E402

from reelhouse.api.app import create_app  # noqa: E402
from reelhouse.api.settings import ApiSettings  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reelhouse/bench"
TOKEN = "bench-bootstrap-token-0123456789"  # noqa: S105 (a local run's own)
HEADERS = {"x-access-token": TOKEN}
SEGMENTS, SEGMENT_S, GAP_S = 60, 10, 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """utime + stime of a process and its reaped children (cutime, cstime), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


async def segments() -> list[Path]:
    folder = CACHE / f"playback-{SEGMENTS}x{SEGMENT_S}s"
    found = sorted(folder.glob(".seg-*.ts"))
    if len(found) >= SEGMENTS:
        return found[:SEGMENTS]
    say(f"cutting {SEGMENTS} segments of {SEGMENT_S} s once (cached in {folder})")
    return await cut_segments(folder, count=SEGMENTS, seconds=SEGMENT_S)


async def one(client: httpx.AsyncClient, job_id: str, start: datetime, fmt: str,
              precise: bool) -> dict[str, float]:  # fmt: skip
    body = {"id": job_id, "start": start.isoformat(), "duration": SEGMENTS * SEGMENT_S + GAP_S,
            "format": fmt, "precise": precise}  # fmt: skip
    r = await client.post("/api/recording/getPlaybackUrl", json=body, headers=HEADERS)
    r.raise_for_status()
    url = r.json()["url"]
    me = os.getpid()
    cpu0 = cpu_s(me)
    t0 = time.perf_counter()
    first = None
    size = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
    total = time.perf_counter() - t0
    cpu = cpu_s(me) - cpu0  # the API (this process) and its reaped FFmpeg
    return {"ttfb_s": first or total, "total_s": total, "bytes": size,
            "cpu_pct": 100 * cpu / total}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cut = await segments()
    tmp = Path(tempfile.mkdtemp(prefix="reelhouse-bench-playback-"))
    nats, ferret = infra.nats_server(tmp / "nats"), infra.ferretdb(tmp / "ferretdb")
    nats.start()
    ferret.start()
    port = infra.free_port()
    settings = ApiSettings(
        nats_url=f"nats://127.0.0.1:{nats.port}",
        mongodb_url=f"mongodb://127.0.0.1:{ferret.port}/",
        mongodb_database="bench_playback", subject_prefix="benchplayback",
        storage_root=tmp / "recordings", archive_root=tmp / "archive",
        bootstrap_token=TOKEN, bootstrap_token_file=tmp / "bootstrap-token",
        api_host="127.0.0.1", api_port=port, log_level="warning",
        probe_allow_networks="127.0.0.0/8",  # the seed job's input address (never dialled)
    )  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))  # fmt: skip
    serving = asyncio.create_task(server.serve())
    results: dict[str, list[dict[str, float]]] = {}
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, not an event)
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            created = await client.post("/api/recording/create", headers=HEADERS,
                                        json=recording_payload(1, active=False))  # fmt: skip
            created.raise_for_status()
            job_id = created.json()["id"]
            start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
            mongo = AsyncMongoClient(settings.mongodb_url, tz_aware=True)
            folder = settings.storage_root.resolve() / job_id
            folder.mkdir(parents=True, exist_ok=True)
            await register_segments(mongo[settings.mongodb_database], job_id=job_id,
                                    folder=folder, segments=cut, seconds=SEGMENT_S, start=start,
                                    gap_after=SEGMENTS // 2, gap_s=GAP_S)  # fmt: skip
            await mongo.close()
            for fmt, precise in (("mp4", False), ("ts", False), ("mp4", True)):
                name = f"{fmt}{' precise' if precise else ''}"
                runs = results[name] = []
                await one(client, job_id, start, fmt, precise)  # warm-up (page cache)
                for _ in range(args.runs if not precise else max(1, args.runs // 2)):
                    runs.append(await one(client, job_id, start, fmt, precise))
                say(f"{name}: {runs[-1]}")
    finally:
        server.should_exit = True
        await serving
        ferret.stop()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{SEGMENTS} segments x {SEGMENT_S} s, one {GAP_S:g} s gap; load "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")  # fmt: skip
    print(
        "| format | runs | TTFB p50 (s) | TTFB max (s) | whole range (s) | MB | CPU % of a core |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        ttfb = [r["ttfb_s"] for r in runs]
        print(f"| {name} | {len(runs)} | {statistics.median(ttfb):.3f} | {max(ttfb):.3f} | "
              f"{statistics.median(r['total_s'] for r in runs):.2f} | "
              f"{statistics.median(r['bytes'] for r in runs) / 1e6:.1f} | "
              f"{statistics.median(r['cpu_pct'] for r in runs):.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"at": datetime.now(UTC).isoformat(),
                                         "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
