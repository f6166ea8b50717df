"""The durable plane's hot queries on the local MongoDB-compatible server, through pymongo.

Seeds one database with J recording jobs (with their input documents) across tenants, and F file
records, then times each hot query of the engine R times (p50/p95/max), on each backend asked
for: ``ferretdb-lite -backend sqlite`` and ``-backend postgresql`` (this worktree's helper),
and ``--baseline BIN`` (an older helper binary, e.g. main's SQLite-only build). Two shapes of
each list query: ``as-was`` (the filters the API and the janitor sent before this benchmark:
``{_id, tenant}``, ``$in``, ``$ne``, sort + skip) and ``equality`` (top-level equality only, what
the code sends now where the local server is the target; sorting and the small filters in Python).

Tenants: one "big" tenant with ``--big`` jobs (default 2,000) and the rest in tenants of 200.
Files: ``--file-jobs`` jobs of the big tenant (default 50) get F / file-jobs records each (a 24/7
job split every 10 minutes for ~28 days at the defaults), newest first as ``getFiles`` pages them.

    uv run python bench/db_queries.py [--jobs 10000] [--files 200000] [--reps 30]
        [--backend postgresql --backend sqlite] [--baseline .cache/bin/ferretdb-lite]
        [--json out.json]

Writes nothing outside a temporary directory under /tmp (removed at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pymongo
from _common import (
    ROOT,
    distribution,
    header,
    loadavg,
    save_json,
    say,
    wait_for_quiet,
)
from bson import ObjectId

sys.path.insert(0, str(ROOT / "tests"))
from support import infra
from support.seeds import recording_payload

PAGE = 50
MAX_CALL_S = 20.0
"""A query slower than this runs once after its warm-up (or, if made of many, is estimated)."""


def job_doc(i: int, tenant: str, created: dt.datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored recording job as the API writes it (with ``runtime`` as a worker left it) and
    its input document."""
    body = recording_payload(0)
    job_id, input_id = ObjectId(), ObjectId()
    inp = {"_id": input_id, **body.pop("input"), "tenant": tenant, "entity_id": str(job_id),
           "created": created, "modified": created}  # fmt: skip
    body["recording_name"] = f"job {i:05d}"
    job = {"_id": job_id, "tenant": tenant, **body, "input": [input_id], "active": i % 3 == 0,
           "paused": False, "generation": i % 7, "created": created, "modified": created,
           "runtime": {"node": "recorder-x", "state": "running", "pid": 1000 + i, "restarts": 0,
                       "started_at": created}}  # fmt: skip
    return job, inp


def file_doc(job: dict[str, Any], k: int, created: dt.datetime) -> dict[str, Any]:
    name = f"{job['_id']}_{k:05d}.mp4"
    return {"_id": ObjectId(), "tenant": job["tenant"], "file_name": name,
            "file_path": f"/data/recordings/{job['_id']}/{name}", "module_name": "recordings",
            "file_visibility": "FILE_VISIBILITY_PUBLIC", "output_format": "mp4",
            "entity_name": job["recording_name"], "entity_id": str(job["_id"]),
            "size_bytes": 150_000_000 + k, "duration_ms": 600_000,
            "status": "ready" if k % 50 else "failed", "node": "recorder-x", "part": k,
            "created": created, "modified": created}  # fmt: skip


class Seeded:
    """What the seed put where: ids by tenant, the jobs with files."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[ObjectId]] = {}
        self.file_jobs: list[str] = []


def seed(db: Any, jobs: int, files: int, big: int, file_jobs: int) -> Seeded:
    s = Seeded()
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    batch_j: list[dict[str, Any]] = []
    batch_i: list[dict[str, Any]] = []
    for i in range(jobs):
        tenant = "big" if i < big else f"t{(i - big) // 200:03d}"
        job, inp = job_doc(i, tenant, t0 + dt.timedelta(seconds=i))
        s.jobs.setdefault(tenant, []).append(job["_id"])
        batch_j.append(job)
        batch_i.append(inp)
        if len(batch_j) == 500 or i == jobs - 1:
            db.inputs.insert_many(batch_i)
            db.recordings.insert_many(batch_j)
            batch_j, batch_i = [], []
    say(f"seeded {jobs} jobs ({big} in tenant 'big', the rest 200 per tenant)")
    with_files = [db.recordings.find_one({"_id": j}) for j in s.jobs["big"][:file_jobs]]
    s.file_jobs = [str(j["_id"]) for j in with_files]
    per_job = files // max(1, file_jobs)
    batch: list[dict[str, Any]] = []
    for k in range(per_job):
        for job in with_files:
            batch.append(file_doc(job, k, t0 + dt.timedelta(minutes=10 * k)))
            if len(batch) == 1000:
                db.files.insert_many(batch)
                batch = []
    if batch:
        db.files.insert_many(batch)
    say(f"seeded {per_job * len(with_files)} file records ({per_job} per job, {file_jobs} jobs)")
    return s


def timed(fn: Callable[[], Any], reps: int, budget_s: float = 30.0) -> list[float]:
    """``reps`` timings (ms) of ``fn``, fewer (3 at least) when they take over ``budget_s``."""
    out: list[float] = []
    spent = 0.0
    while len(out) < reps and (len(out) < 3 or spent < budget_s):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
        spent += out[-1] / 1000
    return out


def queries(db: Any, s: Seeded, reps: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    """Every hot query, both shapes; ``{name: distribution}``."""
    res: dict[str, dict[str, Any]] = {}
    small = next(t for t in s.jobs if t != "big")
    all_ids = [(t, j) for t, ids in s.jobs.items() for j in ids]

    def pick() -> tuple[str, ObjectId]:
        return all_ids[rng.randrange(len(all_ids))]

    def run(name: str, fn: Callable[[], Any], n: int = reps, *,
            probe: Callable[[], Any] | None = None, times: int = 1) -> None:  # fmt: skip
        """Time ``fn``. A query made of ``times`` similar queries first times one of them
        (``probe``): past ``MAX_CALL_S`` in all, only that estimate is recorded (n = 0)."""
        if probe is not None:
            one = timed(probe, 1)[0]
            if one * times > MAX_CALL_S * 1000:
                res[name] = {"estimated_ms": one * times, "ms_n": 0}
                est = f"~{one * times / 1000:.0f} s per call ({times} x {one:.0f} ms)"
                say(f"  {name}: not run, {est}")
                return
        t = time.perf_counter()
        fn()  # warm-up (and a check that it works)
        if time.perf_counter() - t > MAX_CALL_S:
            n = 1
        res[name] = distribution(timed(fn, n), "ms")
        say(f"  {name}: p50 {res[name]['ms_p50']:.1f} ms, p95 {res[name]['ms_p95']:.1f} ms")

    rec, files, inputs = db.recordings, db.files, db.inputs
    run("find {_id}", lambda: rec.find_one({"_id": pick()[1]}))

    def load_as_was() -> None:
        tenant, job = pick()
        rec.find_one({"_id": job, "tenant": tenant})

    run("find {_id, tenant} (the API's load)", load_as_was)
    for tenant, label in ((small, "200"), ("big", str(len(s.jobs["big"])))):
        n = len(s.jobs[tenant])

        def page(tenant: str = tenant, n: int = n, extra: dict | None = None) -> list:
            skip = rng.randrange(0, max(1, n - PAGE))
            q = {"tenant": tenant, **(extra or {})}
            return list(rec.find(q).sort([("created", 1)]).skip(skip).limit(PAGE))

        run(f"getAll page {{tenant}} sort+skip+limit, tenant of {label}", page)
        run(f"getAll page {{tenant, active}}, tenant of {label}",
            lambda tenant=tenant, n=n: page(tenant, n // 3, {"active": True}))  # fmt: skip
        run(f"getCount {{tenant}}, tenant of {label}",
            lambda tenant=tenant: rec.count_documents({"tenant": tenant}))  # fmt: skip
    big_ids = s.jobs["big"]

    def populate_as_was() -> None:
        jobs = big_ids[:PAGE]
        list(inputs.find({"_id": {"$in": [ObjectId() for _ in jobs]}}))
        list(files.find({"entity_id": {"$in": [str(j) for j in jobs[-5:]]},
                         "status": {"$ne": "deleted"}}).sort("created", 1))  # fmt: skip

    run("getAll populate: inputs $in + files $in (as-was)", populate_as_was, max(3, reps // 10))

    def populate_equality() -> None:
        jobs = [j for _, j in (pick() for _ in range(PAGE))]
        for j in jobs:
            list(inputs.find({"entity_id": str(j)}))

    run("getAll populate: 50 x inputs {entity_id} (equality)", populate_equality, times=PAGE,
        probe=lambda: list(inputs.find({"entity_id": str(pick()[1])})))  # fmt: skip

    def create() -> None:
        db.settings.find_one({"_id": "runtime"})
        job, inp = job_doc(rng.randrange(10**6), small, dt.datetime.now(dt.UTC))
        inputs.insert_many([inp])
        rec.insert_one(job)

    run("create (settings read, input insert, job insert)", create)

    def stop_as_was() -> None:
        tenant, j = pick()
        rec.find_one({"_id": j, "tenant": tenant})
        rec.update_one({"_id": j, "tenant": tenant}, {"$set": {"active": False,
                        "modified": dt.datetime.now(dt.UTC)}})  # fmt: skip

    def stop_equality() -> None:
        _, j = pick()
        rec.find_one({"_id": j})
        rec.update_one({"_id": j}, {"$set": {"active": False, "modified": dt.datetime.now(dt.UTC)}})

    run("stop: load + update {_id, tenant} (as-was)", stop_as_was)
    run("stop: load + update {_id} (equality)", stop_equality)

    fj = s.file_jobs

    def file_page_as_was() -> None:
        job = fj[rng.randrange(len(fj))]
        q = {"tenant": "big", "entity_id": job, "status": {"$ne": "deleted"}}
        files.count_documents(q)
        list(files.find(q).sort([("created", -1), ("_id", -1)]).skip(0).limit(PAGE))

    def file_page_equality() -> None:
        job = fj[rng.randrange(len(fj))]
        docs = [d for d in files.find({"entity_id": job}) if d.get("status") != "deleted"]
        docs.sort(key=lambda d: (d["created"], d["_id"]), reverse=True)
        _ = len(docs), docs[:PAGE]

    if fj:
        run("file page of a job (as-was: count + find $ne sort)", file_page_as_was,
            max(3, reps // 10))  # fmt: skip
        run("file page of a job ({entity_id} equality)", file_page_equality, max(3, reps // 3),
            probe=lambda: list(files.find({"entity_id": fj[0]})))  # fmt: skip

        def retention_as_was() -> None:
            list(rec.find({}, {"delete_after": 1, "max_files": 1, "max_bytes": 1, "tenant": 1}))
            q = {"entity_id": {"$in": fj}, "status": {"$nin": ["deleted", "archived"]}}
            list(files.find(q).sort("created", 1))

        def retention_equality() -> None:
            list(rec.find({}, {"delete_after": 1}))
            for job in fj:
                list(files.find({"entity_id": job}))

        run("retention pass (as-was: all jobs + files $in/$nin)", retention_as_was, 2)
        run("retention pass (equality: all jobs + files per job)", retention_equality, 2,
            probe=lambda: list(files.find({"entity_id": fj[0]})), times=len(fj))  # fmt: skip
    return res


def start_server(binary: str, backend: str | None, work: Path) -> infra.ServerProcess:
    port = infra.free_port()
    argv = [binary, "-listen", f"127.0.0.1:{port}", "-data", str(work), "-log-level", "error"]
    if backend is not None:
        argv += ["-backend", backend]
    srv = infra.ServerProcess("ferretdb", argv, port, work / "ferretdb.log")
    srv.start(timeout=60)
    return srv


def run_backend(label: str, binary: str, backend: str | None, args: argparse.Namespace
                ) -> dict[str, Any]:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="rh-dbbench-", dir="/tmp"))
    work.chmod(0o755)  # PostgreSQL runs as its own user and must reach its cluster
    srv = start_server(binary, backend, work)
    out: dict[str, Any] = {"binary": binary, "backend": backend}
    try:
        client = pymongo.MongoClient(f"mongodb://127.0.0.1:{srv.port}/", tz_aware=True)
        db = client.bench_db
        t = time.monotonic()
        s = seed(db, args.jobs, args.files, args.big, args.file_jobs)
        out["seed_s"] = time.monotonic() - t
        out["load_start"] = wait_for_quiet()
        say(f"{label}: queries ({args.reps} each), load {out['load_start']:.2f}")
        out["queries"] = queries(db, s, args.reps, random.Random(19))
        out["load_end"] = loadavg()
        out["rss_mib"] = _rss_tree(srv.proc.pid) / 2**20  # type: ignore[union-attr]
        client.close()
        return out
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def _rss_tree(pid: int) -> int:
    """RSS of ``pid`` and its descendants (the PostgreSQL cluster is the helper's child)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True)
    rows = [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines()]
    tree, total, grew = {pid}, 0, True
    while grew:
        grew = False
        for p, pp, _ in rows:
            if pp in tree and p not in tree:
                tree.add(p)
                grew = True
    for p, _, rss in rows:
        if p in tree:
            total += rss * 1024
    return total


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: stop the servers
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--big", type=int, default=2_000, help="jobs of the one big tenant")
    p.add_argument("--file-jobs", type=int, default=50, help="jobs that hold the file records")
    p.add_argument("--reps", type=int, default=30, help="repetitions of each query")
    p.add_argument("--backend", action="append", choices=("postgresql", "sqlite"),
                   help="backends of this worktree's helper (default: both)")  # fmt: skip
    p.add_argument("--baseline", help="also run this older (SQLite-only) helper binary")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    runs: list[tuple[str, str, str | None]] = []
    if args.baseline:
        runs.append(("baseline (sqlite)", args.baseline, None))
    binary = infra.ferretdb_binary()
    runs += [(b, binary, b) for b in (args.backend or ["postgresql", "sqlite"])]
    results = {}
    for label, binary_, backend in runs:
        say(f"== {label}: {binary_}")
        results[label] = run_backend(label, binary_, backend, args)
    m = header(f"Durable-plane queries: {args.jobs} jobs, {args.files} file records, "
               f"{args.reps} repetitions (p50 / p95 ms)", started, None)  # fmt: skip
    names = list(next(iter(results.values()))["queries"])
    labels = list(results)
    print("| query | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name in names:
        cells = []
        for lab in labels:
            d = results[lab]["queries"].get(name)
            if d is None:
                cells.append("-")
            elif not d.get("ms_n"):
                cells.append(f"~{d['estimated_ms'] / 1000:.0f} s (est.)")
            else:
                cells.append(f"{d['ms_p50']:.1f} / {d['ms_p95']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| seed (s) | " + " | ".join(f"{results[lab]['seed_s']:.0f}" for lab in labels) + " |")
    print("| RSS after (MiB) | " + " | ".join(f"{results[lab]['rss_mib']:.0f}" for lab in labels)
          + " |")  # fmt: skip
    loads = [f"{results[lab]['load_start']:.2f}/{results[lab]['load_end']:.2f}" for lab in labels]
    print("| 1-min load start/end | " + " | ".join(loads) + " |")
    save_json(
        args.json,
        {
            "date": started.isoformat(timespec="seconds"),
            "machine": m,
            "command": "uv run python bench/db_queries.py " + " ".join(sys.argv[1:]),
            "args": vars(args) | {"json": str(args.json)},
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
