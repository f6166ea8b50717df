"""Disk watermarks on real FerretDB and NATS (issue 6): a critical disk refuses new recordings
with 507 and stops recorders from claiming; the janitor publishes ``disk_warning`` once per level.

The storage disk is made "critical" by a setting, not by filling a filesystem: the critical level
is put one point below the real usage of the test's storage filesystem.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.events import Events
from support.livekv import node_beat
from support.media import ffmpeg_children
from support.seeds import recording_payload, restream_payload
from support.services import settings_from_env
from support.stack import Stack, running_stack
from support.wait import eventually

from reelhouse.common.bus import Bus
from reelhouse.common.mongo import Collections
from reelhouse.janitor.retention import Janitor
from reelhouse.janitor.settings import JanitorSettings


def used_pct(root: Path) -> float:
    root.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(root)
    return 100.0 * usage.used / usage.total


def below_usage(root: Path) -> str:
    """A watermark the storage filesystem is already past (skips on an almost empty disk)."""
    used = used_pct(root)
    if used < 2:
        pytest.skip(f"the storage filesystem is only {used:.2f}% used; no level is below it")
    return f"{max(1.0, used - 1):.2f}"


def critical_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "REELHOUSE_DISK_CRITICAL_PCT": below_usage(Path(env["REELHOUSE_STORAGE_ROOT"]))}


@pytest.fixture
async def critical_stack(service_env, tmp_path):
    async with running_stack(critical_env(service_env), tmp_path) as s:
        yield s


def assert_507(r: Any, module: str) -> None:
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INSUFFICIENT_STORAGE"
    message = body["error"]["message"]
    assert f"cannot activate the {module}" in message
    assert "% full" in message, message
    assert "critical level" in message, message


async def test_critical_disk_refuses_active_recordings_with_507_and_stores_nothing(
    critical_stack: Stack, db
):
    stack = critical_stack
    r = await stack.call("create", recording_payload(0, active=True))
    assert_507(r, "recording")
    assert await db[Collections.RECORDINGS].count_documents({}) == 0
    assert await db[Collections.INPUTS].count_documents({}) == 0

    # An inactive job writes nothing: it is stored; starting it is refused and changes nothing.
    job = await stack.ok("create", recording_payload(0, active=False))
    stored = await db[Collections.RECORDINGS].find_one({"_id": ObjectId(job["id"])})
    assert stored["active"] is False
    assert_507(await stack.call("start", {"id": job["id"]}), "recording")
    update = {**recording_payload(0, active=True), "id": job["id"]}
    assert_507(await stack.call("update", update), "recording")
    after = await db[Collections.RECORDINGS].find_one({"_id": ObjectId(job["id"])})
    assert after["active"] is False
    assert after["generation"] == stored["generation"]
    assert after["modified"] == stored["modified"]

    # Still validated first: a bad body is a 400, not a 507.
    bad = recording_payload(0, active=True)
    bad["recording_name"] = ""
    assert (await stack.call("create", bad)).status_code == 400
    # Unknown ids stay 404 (the job is looked up before the disk).
    missing = await stack.call("start", {"id": str(ObjectId())})
    assert missing.status_code == 404


async def test_critical_disk_refuses_hls_restreams_but_not_network_only_ones(
    critical_stack: Stack, db
):
    stack = critical_stack
    hls = restream_payload(0, active=True, output=[{"output_type": "OUTPUT_TYPE_HLS"}])
    assert_507(await stack.api("restream/create", hls), "restream")
    assert await db[Collections.RESTREAMS].count_documents({}) == 0
    assert await db[Collections.OUTPUTS].count_documents({}) == 0

    network = await stack.api_ok("restream/create", restream_payload(0, active=True))
    assert network["active"] is True
    inactive_hls = await stack.api_ok(
        "restream/create",
        restream_payload(0, active=False, output=[{"output_type": "OUTPUT_TYPE_HLS"}]),
    )
    assert_507(await stack.api("restream/start", {"id": inactive_hls["id"]}), "restream")


async def test_below_the_critical_level_recordings_are_accepted(service_env, tmp_path, db):
    env = {**service_env, "REELHOUSE_DISK_CRITICAL_PCT": "100", "REELHOUSE_DISK_WARNING_PCT": "99"}
    async with running_stack(env, tmp_path) as stack:
        job = await stack.ok("create", recording_payload(0, active=False))
        started = await stack.ok("start", {"id": job["id"]})
        assert started["active"] is True


async def test_recorder_does_not_claim_while_the_disk_is_critical(service_env, tmp_path, db):
    async with running_stack(service_env, tmp_path) as stack:
        # Stored inactive through the API, then activated behind the API's back.
        job = await stack.ok("create", recording_payload(0, active=False))
        oid = ObjectId(job["id"])
        await db[Collections.RECORDINGS].update_one(
            {"_id": oid}, {"$set": {"active": True}, "$inc": {"generation": 1}}
        )
        critical = critical_env(service_env)["REELHOUSE_DISK_CRITICAL_PCT"]
        recorder = await stack.start_recorder(REELHOUSE_DISK_CRITICAL_PCT=critical)

        async def seen() -> Any:  # the recorder's heartbeat in the live plane
            env = stack.env
            return await node_beat(env["REELHOUSE_NATS_URL"], env["REELHOUSE_SUBJECT_PREFIX"],
                                   "recorder", "recorder-1")  # fmt: skip

        first = await eventually(seen, timeout=30, what="the recorder's heartbeat")
        # Reconcile every 0.5 s: wait for heartbeats 3 s past the first one (6+ claim passes).
        deadline = first["at"] + 3

        async def later() -> Any:
            row = await seen()
            return row if row and row["at"] >= deadline else None

        row = await eventually(later, timeout=30, what="3 s of recorder heartbeats")
        assert row["running_jobs"] == 0
        stored = await db[Collections.RECORDINGS].find_one({"_id": oid})
        assert stored["active"] is True
        assert not stored.get("runtime"), stored.get("runtime")
        assert ffmpeg_children(recorder.pid) == []
        assert recorder.output().count("claim_refused_disk_critical") == 1

        # The control: the same job is claimable by a recorder whose disk is not critical.
        await stack.start_recorder(REELHOUSE_DISK_CRITICAL_PCT="100")

        async def claimed() -> Any:
            doc = await db[Collections.RECORDINGS].find_one({"_id": oid})
            return (doc.get("runtime") or {}).get("node")

        assert await eventually(claimed, timeout=30, what="a claim") == "recorder-2"


async def test_janitor_publishes_disk_warning_once_per_level_change(settings_env, db):
    root = Path(settings_env["REELHOUSE_STORAGE_ROOT"])
    level = below_usage(root)
    env = {
        **settings_env,
        "REELHOUSE_DISK_WARNING_PCT": level,
        "REELHOUSE_DISK_CRITICAL_PCT": "100",
    }
    settings = settings_from_env(JanitorSettings, env)
    bus = Bus(settings, name="janitor-test")
    await bus.start()
    try:
        assert await bus.wait_connected(timeout=10)
        janitor = Janitor(
            db=db,
            storage_root=settings.storage_root,
            node_id="janitor-a",
            bus=bus,
            disk_warning_pct=settings.disk_warning_pct,
            disk_critical_pct=settings.disk_critical_pct,
        )
        async with Events(settings.nats_url, settings.subject_prefix) as events:
            await janitor.run_pass()
            await eventually(lambda: len(events.received) == 1, timeout=10, what="disk_warning")
            await janitor.run_pass()  # same level: no second event
            janitor.disk_critical_pct = float(level)
            await janitor.run_pass()  # now critical: one more
            await eventually(lambda: len(events.received) == 2, timeout=10, what="critical")
    finally:
        await bus.close()

    assert [e["type"] for e in events.received] == ["disk_warning", "disk_warning"]
    assert [e["level"] for e in events.received] == ["warning", "critical"]
    first = events.received[0]
    assert first["node"] == "janitor-a"
    assert first["warning_pct"] == float(level)
    assert first["used_pct"] >= float(level)
    assert "% full" in first["reason"]
    assert "job_id" not in first
