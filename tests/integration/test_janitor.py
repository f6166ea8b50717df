"""The janitor on real FerretDB and NATS: retention by age/count/size, races, purges, orphans,
vanished files, and ``/api/storage/*``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.events import Events
from support.services import settings_from_env
from support.stack import running_stack
from support.wait import eventually

from reelhouse.common.bus import Bus
from reelhouse.common.mongo import Collections
from reelhouse.janitor.retention import Janitor
from reelhouse.janitor.settings import JanitorSettings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _root(settings_env: dict[str, str]) -> Path:
    return Path(settings_env["REELHOUSE_STORAGE_ROOT"])


async def _job(db, name: str = "job", **rules: int) -> str:
    job_id = ObjectId()
    await db[Collections.RECORDINGS].insert_one(
        {"_id": job_id, "tenant": "default", "recording_name": name, "created": NOW,
         "delete_after": 0, **rules}
    )  # fmt: skip
    return str(job_id)


async def _file(
    db, root: Path, job_id: str, name: str, *, age_days: float, size: int = 10,
    status: str = "ready", write: bool = True,
) -> dict[str, Any]:  # fmt: skip
    folder = root / job_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if write:
        path.write_bytes(b"x" * size)
    created = NOW - timedelta(days=age_days)
    record = {
        "_id": ObjectId(), "tenant": "default", "file_name": name, "file_path": str(path.resolve()),
        "entity_id": job_id, "status": status, "size_bytes": size, "duration_ms": 1000,
        "created": created, "modified": created,
    }  # fmt: skip
    await db[Collections.FILES].insert_one(record)
    return record


def _janitor(db, root: Path, node: str = "janitor-a", **kw: Any) -> Janitor:
    return Janitor(db=db, storage_root=root, node_id=node, **kw)


async def _names(db, job_id: str) -> set[str]:
    return {d["file_name"] async for d in db[Collections.FILES].find({"entity_id": job_id})}


def _on_disk(root: Path, job_id: str) -> set[str]:
    return {p.name for p in (root / job_id).iterdir()}


async def test_retention_by_age_deletes_exactly_the_old_files(db, settings_env):
    root = _root(settings_env)
    job = await _job(db, delete_after=7)
    keep_forever = await _job(db, name="forever")
    await _file(db, root, job, "old-1.mp4", age_days=30)
    await _file(db, root, job, "old-2.mp4", age_days=8, status="failed")
    await _file(db, root, job, "new.mp4", age_days=6)
    await _file(db, root, job, "live.mp4", age_days=40, status="recording")
    await _file(db, root, job, "joining.mp4", age_days=40, status="processing")
    await _file(db, root, keep_forever, "ancient.mp4", age_days=3000)

    report = await _janitor(db, root).run_pass(now=NOW)

    assert sorted(f.file_name for f in report.deleted) == ["old-1.mp4", "old-2.mp4"]
    assert {f.reason for f in report.deleted} == {"delete_after"}
    assert await _names(db, job) == {"new.mp4", "live.mp4", "joining.mp4"}
    assert _on_disk(root, job) == {"new.mp4", "live.mp4", "joining.mp4"}
    assert await _names(db, keep_forever) == {"ancient.mp4"}
    assert _on_disk(root, keep_forever) == {"ancient.mp4"}
    # The same instant again: nothing left to do. A later clock reaches "new.mp4".
    assert (await _janitor(db, root).run_pass(now=NOW)).deleted == []
    later = await _janitor(db, root).run_pass(now=NOW + timedelta(days=2))
    assert [f.file_name for f in later.deleted] == ["new.mp4"]


async def test_max_files_keeps_the_newest_n(db, settings_env):
    root = _root(settings_env)
    job = await _job(db, max_files=2)
    for age in (5, 4, 3, 2, 1):
        await _file(db, root, job, f"f{age}.mp4", age_days=age)

    settings = settings_from_env(JanitorSettings, settings_env)
    bus = Bus(settings, name="janitor-test")
    await bus.start()
    try:
        assert await bus.wait_connected(timeout=10)
        async with Events(settings.nats_url, settings.subject_prefix) as events:
            report = await _janitor(db, root, bus=bus).run_pass(now=NOW)
            await eventually(lambda: len(events.received) == 3, timeout=10, what="3 events")
    finally:
        await bus.close()

    assert sorted(f.file_name for f in report.deleted) == ["f3.mp4", "f4.mp4", "f5.mp4"]
    assert {f.reason for f in report.deleted} == {"max_files"}
    assert events.types(job) == ["file_deleted"] * 3
    assert sorted(e["file"]["file_name"] for e in events.received) == [
        "f3.mp4", "f4.mp4", "f5.mp4"
    ]  # fmt: skip
    assert await _names(db, job) == {"f1.mp4", "f2.mp4"} == _on_disk(root, job)


async def test_max_bytes_keeps_the_newest_under_the_limit(db, settings_env):
    root = _root(settings_env)
    job = await _job(db, max_bytes=250)
    await _file(db, root, job, "a.mp4", age_days=4, size=100)
    await _file(db, root, job, "b.mp4", age_days=3, size=100)
    await _file(db, root, job, "c.mp4", age_days=2, size=100)
    await _file(db, root, job, "d.mp4", age_days=1, size=100)

    report = await _janitor(db, root).run_pass(now=NOW)

    assert sorted(f.file_name for f in report.deleted) == ["a.mp4", "b.mp4"]
    assert {f.reason for f in report.deleted} == {"max_bytes"}
    assert sum(f.size_bytes for f in report.deleted) == 200
    assert await _names(db, job) == {"c.mp4", "d.mp4"} == _on_disk(root, job)


async def test_an_hls_playlist_goes_with_its_segments(db, settings_env):
    root = _root(settings_env)
    job = await _job(db, delete_after=1)
    folder = root / job
    folder.mkdir(parents=True)
    (folder / "show-0.ts").write_bytes(b"a" * 50)
    (folder / "show-1.ts").write_bytes(b"b" * 50)
    (folder / "show.m3u8").write_text("#EXTM3U\n#EXTINF:2,\nshow-0.ts\n#EXTINF:2,\nshow-1.ts\n")
    await _file(db, root, job, "show.m3u8", age_days=3, size=130, write=False)
    await _file(db, root, job, "keep.mp4", age_days=0)

    report = await _janitor(db, root).run_pass(now=NOW)

    assert [f.file_name for f in report.deleted] == ["show.m3u8"]
    assert _on_disk(root, job) == {"keep.mp4"}
    assert report.orphans == []


async def test_two_janitors_racing_delete_each_file_exactly_once(db, settings_env):
    root = _root(settings_env)
    expected = set()
    for j in range(3):
        job = await _job(db, name=f"job{j}", delete_after=1, max_files=3)
        for i in range(12):  # 1, 4, 7, ... 34 hours old
            record = await _file(db, root, job, f"j{j}-{i:02}.mp4", age_days=(3 * i + 1) / 24)
            if i >= 3:  # i >= 8: older than a day; 3..7: beyond the newest three
                expected.add(record["file_name"])
    a, b = _janitor(db, root, "janitor-a"), _janitor(db, root, "janitor-b")

    ra, rb = await asyncio.gather(a.run_pass(now=NOW), b.run_pass(now=NOW))

    deleted_a = [f.file_name for f in ra.deleted]
    deleted_b = [f.file_name for f in rb.deleted]
    assert ra.errors == []
    assert rb.errors == []
    assert set(deleted_a).isdisjoint(deleted_b)
    assert len(deleted_a) + len(deleted_b) == len(expected) == 27
    assert set(deleted_a) | set(deleted_b) == expected
    remaining = {d["file_name"] async for d in db[Collections.FILES].find({})}
    assert len(remaining) == 9
    assert remaining.isdisjoint(expected)
    on_disk = {p.name for p in root.rglob("*.mp4")}
    assert on_disk == remaining


async def test_soft_deleted_records_are_purged_after_the_grace_period(db, settings_env):
    root = _root(settings_env)
    job = await _job(db)
    old = await _file(db, root, job, "old.mp4", age_days=2, status="deleted")
    await db[Collections.FILES].update_one(
        {"_id": old["_id"]}, {"$set": {"deleted_at": NOW - timedelta(hours=2)}}
    )
    recent = await _file(db, root, job, "recent.mp4", age_days=2, status="deleted")
    await db[Collections.FILES].update_one(
        {"_id": recent["_id"]}, {"$set": {"deleted_at": NOW - timedelta(minutes=5)}}
    )

    report = await _janitor(db, root, deleted_grace_s=3600).run_pass(now=NOW)

    assert [(f.file_name, f.reason) for f in report.deleted] == [("old.mp4", "purge")]
    assert await _names(db, job) == {"recent.mp4"} == _on_disk(root, job)


async def test_a_vanished_file_is_marked_failed_missing(db, settings_env):
    root = _root(settings_env)
    job = await _job(db)
    gone = await _file(db, root, job, "gone.mp4", age_days=1, write=False)
    here = await _file(db, root, job, "here.mp4", age_days=1)
    writing = await _file(db, root, job, "writing.mp4", age_days=0, status="recording", write=False)

    report = await _janitor(db, root).run_pass(now=NOW)

    assert report.missing == [str(gone["_id"])]
    files = db[Collections.FILES]
    doc = await files.find_one({"_id": gone["_id"]})
    assert (doc["status"], doc["failure_reason"]) == ("failed", "missing")
    assert (await files.find_one({"_id": here["_id"]}))["status"] == "ready"
    assert (await files.find_one({"_id": writing["_id"]}))["status"] == "recording"


async def test_orphans_are_reported_and_removed_only_when_allowed(db, settings_env):
    root = _root(settings_env)
    job = await _job(db)
    await _file(db, root, job, "known.mp4", age_days=1)
    folder = root / job
    (folder / "stray.mp4").write_bytes(b"s" * 42)
    (folder / ".part-2026.csv").write_text("being written\n")
    (folder / "fresh.mp4").write_bytes(b"f")
    old = time.time() - 7200
    for name in ("stray.mp4", ".part-2026.csv", "known.mp4"):
        os.utime(folder / name, (old, old))
    (root / "not-a-job").mkdir()
    (root / "not-a-job" / "x.mp4").write_bytes(b"x")
    now = datetime.now(UTC)

    reported = await _janitor(db, root, orphan_grace_s=3600).run_pass(now=now)

    assert [(Path(o.path).name, o.size_bytes, o.removed) for o in reported.orphans] == [
        ("stray.mp4", 42, False)
    ]
    assert (folder / "stray.mp4").exists()

    removed = await _janitor(db, root, orphan_grace_s=3600, remove_orphans=True).run_pass(now=now)

    assert [(Path(o.path).name, o.removed) for o in removed.orphans] == [("stray.mp4", True)]
    assert _on_disk(root, job) == {"known.mp4", ".part-2026.csv", "fresh.mp4"}
    assert (root / "not-a-job" / "x.mp4").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs) to fill; needs root, as CI has here."""
    path = tmp_path / "small-disk"
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs to mount a 4 MiB tmpfs (root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


async def test_eviction_at_critical_deletes_oldest_first_and_keeps_each_jobs_newest(db, small_disk):
    size = 700 * 1024  # five files: about 3.4 of 4 MiB, 85 %
    a, b = await _job(db, name="a"), await _job(db, name="b")
    for job, name, age in ((a, "a1", 5), (a, "a2", 4), (b, "b1", 3), (b, "b2", 2), (a, "a3", 1)):
        await _file(db, small_disk, job, f"{name}.mp4", age_days=age, size=size)
    await _file(db, small_disk, a, "live.mp4", age_days=9, size=10, status="recording")
    used = shutil.disk_usage(small_disk)
    assert used.used / used.total > 0.8

    off = await _janitor(db, small_disk, disk_critical_pct=60).run_pass(now=NOW)
    assert off.deleted == []  # eviction is off by default

    report = await _janitor(
        db, small_disk, disk_critical_pct=60, evict_when_critical=True
    ).run_pass(now=NOW)
    # Oldest first, and only until the disk is below 60 %: a1 and a2 (three files left, ~51 %).
    assert [(f.file_name, f.reason) for f in report.deleted] == [
        ("a1.mp4", "evicted"), ("a2.mp4", "evicted")
    ]  # fmt: skip
    used = shutil.disk_usage(small_disk)
    assert used.used / used.total < 0.6
    assert await _names(db, a) == {"a3.mp4", "live.mp4"} == _on_disk(small_disk, a)

    # However low the level: each job keeps its newest ready file; files being written stay.
    low = await _janitor(db, small_disk, disk_critical_pct=1, evict_when_critical=True).run_pass(
        now=NOW
    )
    assert [f.file_name for f in low.deleted] == ["b1.mp4"]
    assert await _names(db, b) == {"b2.mp4"}
    assert await _names(db, a) == {"a3.mp4", "live.mp4"}


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


async def test_get_info_counts_each_jobs_files(stack, db):
    root = stack.storage_root
    one = await _job(db, name="One")
    two = await _job(db, name="Two")
    await _file(db, root, one, "a.mp4", age_days=1, size=100)
    await _file(db, root, one, "b.mp4", age_days=1, size=250)
    await _file(db, root, one, "c.mp4", age_days=1, size=999, status="deleted")
    await _file(db, root, two, "d.mp4", age_days=1, size=7)

    info = await stack.api_ok("storage/getInfo")

    assert info["total"] > 0
    assert info["free"] >= 0
    assert info["used"] <= info["total"]
    assert info["per_job"] == [
        {"id": one, "recording_name": "One", "files": 2, "bytes": 350},
        {"id": two, "recording_name": "Two", "files": 1, "bytes": 7},
    ]
    assert info["archive"] == {"files": 0, "bytes": 0}


async def test_cleanup_is_503_without_a_janitor(stack):
    r = await stack.api("storage/cleanup")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "UNAVAILABLE"


async def test_cleanup_runs_a_pass_on_a_janitor_and_returns_what_it_removed(stack, db):
    root = stack.storage_root
    # A long interval: after its first pass, the janitor only runs the passes we ask for.
    janitor = await stack.start_janitor(REELHOUSE_INTERVAL_S="3600")
    deadline = time.monotonic() + 30
    while (r := await stack.api("storage/cleanup")).status_code == 503:
        assert time.monotonic() < deadline, janitor.output()[-2000:]
        await asyncio.sleep(0.3)
    assert r.status_code == 200, (r.text, janitor.output()[-2000:])
    job = await _job(db, max_files=1)
    await _file(db, root, job, "older.mp4", age_days=2, size=11)
    await _file(db, root, job, "newer.mp4", age_days=1, size=12)

    r = await stack.api("storage/cleanup")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node"] == "janitor-1"
    assert [(f["file_name"], f["reason"], f["size_bytes"]) for f in body["deleted"]] == [
        ("older.mp4", "max_files", 11)
    ]
    assert body["errors"] == []
    assert await _names(db, job) == {"newer.mp4"} == _on_disk(root, job)
    assert await janitor.terminate() == 0
