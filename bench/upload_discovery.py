"""How long the janitor's uploader takes to find its work on a large archive (issue 24).

Seeds the local MongoDB-compatible server (ferretdb-lite, its default PostgreSQL backend, or
``REELHOUSE_FERRETDB_BACKEND=sqlite``) with ``--jobs`` recording jobs that name a storage target
(``keep_local``) and ``--files`` file records spread over them: all ``ready``, nearly all
already ``uploaded``, ``--backlog`` of them ``pending`` and a few ``failed`` with a future
``retry_at`` (what an archive looks like while uploads keep up). Then it times, R times each:

- ``per-job scan``: the uploader's discovery before the backlog index was used for it (every
  job with a target, then every file record of each, ``find_each`` on ``entity_id``): the query
  shape is timed directly, so it stays measurable after the change;
- ``Uploader.scan()``: one pass of this worktree's uploader, as its loop runs it (no live plane
  given, so it claims and uploads nothing: discovery only);
- ``Uploader.scan(repair=True)``, where the uploader has one: the slow repair pass;
- with ``--before REV``: ``Uploader.scan()`` of the uploader at git revision REV (e.g. ``main``
  before this change), on the same seeded server, so both are measured under the same load.

    uv run python bench/upload_discovery.py [--files 20000] [--jobs 20] [--reps 10]
        [--before REV] [--json out.json]

Writes nothing outside a temporary directory under /tmp (removed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, distribution, header, save_json, say
from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient

sys.path.insert(0, str(ROOT / "tests"))
from support import infra

from reelhouse.common.mongo import Collections, find_each
from reelhouse.janitor.settings import JanitorSettings
from reelhouse.janitor.uploads import Uploader


def seed(db: Any, jobs: int, files: int, backlog: int, failed: int) -> list[str]:
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    sid = str(ObjectId())
    job_ids = [ObjectId() for _ in range(jobs)]
    db.recordings.insert_many(
        [{"_id": j, "tenant": "default", "recording_name": f"job {i}", "storage_id": sid,
          "keep_local": True, "local_grace_hours": 0, "active": True, "created": t0}
         for i, j in enumerate(job_ids)]
    )  # fmt: skip
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    batch: list[dict[str, Any]] = []
    for k in range(files):
        job = job_ids[k % jobs]
        created = t0 + dt.timedelta(seconds=k)
        doc: dict[str, Any] = {
            "_id": ObjectId(), "tenant": "default", "entity_id": str(job),
            "file_name": f"f{k:07d}.ts", "file_path": f"/nowhere/{job}/f{k:07d}.ts",
            "status": "ready", "size_bytes": 4_500_000, "duration_ms": 6000,
            "created": created, "modified": created, "ready_at": created,
        }  # fmt: skip
        left = files - k
        if left <= failed:
            doc["upload"] = {"state": "failed", "storage_id": sid, "attempts": 3,
                             "reason": "unreachable", "retry_at": future}  # fmt: skip
            doc["upload_backlog"] = sid
        elif left <= failed + backlog:
            doc["upload"] = {"state": "pending", "storage_id": sid, "attempts": 0,
                             "queued_at": created}  # fmt: skip
            doc["upload_backlog"] = sid
        else:
            doc["upload"] = {"state": "uploaded", "storage_id": sid, "key": f"k/{k}",
                             "size": 4_500_000, "verified_at": created}  # fmt: skip
        batch.append(doc)
        if len(batch) == 1000:
            db.files.insert_many(batch)
            batch = []
    if batch:
        db.files.insert_many(batch)
    say(f"seeded {jobs} jobs with a target, {files} file records ({backlog} pending, "
        f"{failed} failed)")  # fmt: skip
    return [str(j) for j in job_ids]


UPLOADS = "services/janitor/src/reelhouse/janitor/uploads.py"


def uploader_at(rev: str, tmp: Path) -> Any:
    """The ``Uploader`` class of ``uploads.py`` at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:{UPLOADS}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = tmp / "uploads_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("uploads_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Uploader


async def measure(url: str, reps: int, before: Any = None) -> dict[str, Any]:
    client: AsyncMongoClient = AsyncMongoClient(url, tz_aware=True)
    db = client["reelhouse"]
    settings = JanitorSettings(upload_concurrency=64)
    kwargs = {"db": db, "bus": None, "live": None, "settings": settings, "node_id": "bench",
              "storage_root": Path("/nowhere")}  # fmt: skip
    up = Uploader(**kwargs)
    out: dict[str, Any] = {}

    async def per_job_scan() -> int:
        jobs = [str(j["_id"]) async for j in db[Collections.RECORDINGS].find(
            {"storage_id": {"$type": "string"}}, {"storage_id": 1})]  # fmt: skip
        return len(await find_each(db[Collections.FILES], "entity_id", jobs))

    async def timed(name: str, fn: Any) -> None:
        await fn()  # warm-up
        ms: list[float] = []
        for _ in range(reps):
            t = time.perf_counter()
            await fn()
            ms.append((time.perf_counter() - t) * 1000)
            await asyncio.gather(*up.running.values(), return_exceptions=True)
        out[name] = distribution(ms, "ms")
        say(f"  {name}: p50 {out[name]['ms_p50']:.1f} ms, max {out[name]['ms_max']:.1f} ms")

    await timed("per-job scan (before)", per_job_scan)
    if before is not None:
        old = before(**kwargs)
        await timed("Uploader.scan() at --before", old.scan)
        await asyncio.gather(*old.running.values(), return_exceptions=True)
    t = time.perf_counter()
    await up.scan()  # this process's first pass reads each job's records once (catch-up)
    out["Uploader.scan() first pass"] = {"ms": (time.perf_counter() - t) * 1000}
    say(f"  Uploader.scan() first pass: {out['Uploader.scan() first pass']['ms']:.1f} ms")
    await timed("Uploader.scan()", up.scan)
    if "repair" in inspect.signature(up.scan).parameters:
        await timed("Uploader.scan(repair=True)", lambda: up.scan(repair=True))
    await client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--backlog", type=int, default=20)
    p.add_argument("--failed", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--before", metavar="REV", help="also time the uploader of this git revision")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    machine = header("upload discovery", dt.datetime.now(dt.UTC))
    with tempfile.TemporaryDirectory(prefix="upload-discovery-") as tmp:
        srv = infra.ferretdb(Path(tmp))
        srv.start()
        try:
            url = f"mongodb://127.0.0.1:{srv.port}/"
            sync: MongoClient = MongoClient(url, tz_aware=True)
            seed(sync["reelhouse"], args.jobs, args.files, args.backlog, args.failed)
            sync.close()
            before = uploader_at(args.before, Path(tmp)) if args.before else None
            results = asyncio.run(measure(url, args.reps, before))
        finally:
            srv.stop()
    if args.json:
        save_json(
            args.json,
            {"machine": machine, "args": vars(args) | {"json": str(args.json)}, "results": results},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
