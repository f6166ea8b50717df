"""Recording sessions and file processing: pause/resume, continued HLS playlists, repair of what a
dead or absent owner left, ``reprocessFile``.

Real nats-server, FerretDB and FFmpeg; recorders are subprocesses; live SRT sources.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.events import Events
from support.media import av_streams, ffprobe, free_port
from support.stack import Stack, running_stack
from support.wait import eventually
from test_recording_jobs import (
    duration_s,
    job,
    job_body,
    out_time_s,
    probe,
    recorder_ready,
    stop_and_wait,
    wait_recorded,
)

from reelhouse.common.mongo import Collections


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


async def running_parts(stack: Stack, job_id: str, n: int) -> None:
    async def ok() -> bool:
        j = await job(stack, job_id)
        return (j["runtime"] or {}).get("state") == "running" and len(j["recordedFiles"]) == n

    await eventually(ok, timeout=40, what=f"part {n} recording")


async def paused_and_idle(stack: Stack, db, job_id: str, closed: int) -> dict[str, Any]:
    """The job is paused, no worker holds it, and ``closed`` parts are closed."""

    async def idle() -> dict[str, Any] | None:
        j = await job(stack, job_id)
        query = {"entity_id": job_id, "part_ended_at": {"$exists": True}}
        done = await db[Collections.FILES].count_documents(query)
        return j if j["runtime"] is None and done == closed else None

    j = await eventually(idle, timeout=30, what=f"paused, idle, {closed} part(s) closed")
    assert j["active"] is True
    assert j["paused"] is True
    return j


async def record_parts_with_pauses(stack: Stack, db, job_id: str, parts: int) -> list[float]:
    """Record ``parts`` parts of >= 3 s, pausing after each; returns each part's media time."""
    live = []
    for part in range(1, parts + 1):
        await running_parts(stack, job_id, part)
        await wait_recorded(stack, job_id, 3.0)
        live.append(await out_time_s(stack, job_id))
        paused = await stack.ok("pause", {"id": job_id})
        assert paused["paused"] is True
        await paused_and_idle(stack, db, job_id, closed=part)
        if part < parts:
            await asyncio.sleep(2)  # the scenario itself: the pause lasts 2 s
            resumed = await stack.ok("resume", {"id": job_id})
            assert resumed["paused"] is False
    return live


async def test_pause_and_resume_twice_is_one_file_with_two_pause_gaps(stack, db, srt_source):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]
        live = await record_parts_with_pauses(stack, db, job_id, 3)
        # While paused the parts wait, unjoined, for the session to end.
        waiting = await db[Collections.FILES].count_documents(
            {"entity_id": job_id, "status": "recording"}
        )
        assert waiting == 3
        # Stopped while paused: no recorder owns the job; a recorder finishes the session.
        await stack.ok("stop", {"id": job_id})

        async def joined() -> list[dict[str, Any]] | None:
            files = (await job(stack, job_id))["recordedFiles"]
            return files if [f["status"] for f in files] == ["ready"] else None

        (ready,) = await eventually(joined, timeout=40, what="the session joined")
        info = await probe(ready["file_path"])
        av_streams(info)
        assert duration_s(info) >= sum(live) - 3.0, (duration_s(info), live)
        stored = await db[Collections.FILES].find_one({"entity_id": job_id})
        report = stored["integrity"]
        assert report["parts"] == 3
        assert [g["cause"] for g in report["gaps"]] == ["pause", "pause"]
        assert all(g["duration_ms"] >= 2000 for g in report["gaps"])
        assert (await job(stack, job_id))["runtime"] is None  # the idle lease was given back
        types = ev.types(job_id)
        assert types.count("job_paused") == 3
        assert types.count("job_resumed") == 2
        await eventually(lambda: "file_ready" in ev.types(job_id), timeout=10, what="file_ready")
        types = ev.types(job_id)
        assert types.index("processing_started") < types.index("processing_progress")
        assert types.index("processing_progress") < types.index("processing_complete")
        progress = [e["progress_pct"] for e in ev.received if e["type"] == "processing_progress"]
        assert progress[-1] == 100.0
        assert progress == sorted(progress)


async def test_pause_and_resume_refuse_a_stopped_job_and_repeat_harmlessly(stack, db):
    body = {**job_body("srt://127.0.0.1:9?mode=caller"), "active": False}
    job_id = (await stack.ok("create", body))["id"]
    for method in ("pause", "resume"):
        r = await stack.call(method, {"id": job_id})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["field"] == "id"
    stored = await db[Collections.RECORDINGS].find_one({"_id": ObjectId(job_id)})
    assert not stored.get("paused")
    await db[Collections.RECORDINGS].update_one({"_id": stored["_id"]}, {"$set": {"active": True}})
    first = await stack.ok("pause", {"id": job_id})
    again = await stack.ok("pause", {"id": job_id})
    assert first["paused"] is again["paused"] is True
    generation = (await db[Collections.RECORDINGS].find_one({"_id": stored["_id"]}))["generation"]
    await stack.ok("resume", {"id": job_id})
    after = await db[Collections.RECORDINGS].find_one({"_id": stored["_id"]})
    assert after["generation"] == generation  # same session
    # stop ends the pause as well as the session
    await stack.ok("pause", {"id": job_id})
    stopped = await stack.ok("stop", {"id": job_id})
    assert stopped["paused"] is False
    assert stopped["active"] is False
    r = await stack.call("pause", {"id": "0" * 24})
    assert r.status_code == 404


async def test_m3u8_session_continues_one_playlist_with_a_discontinuity(stack, db, srt_source):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    body = job_body(srt_source.url, 2)
    assert body["output_format"] == "m3u8"
    assert body["recording_mode"] == "RECORDING_MODE_INFINITY"
    job_id = (await stack.ok("create", body))["id"]
    await record_parts_with_pauses(stack, db, job_id, 2)
    parts = (await job(stack, job_id))["recordedFiles"]
    assert len({p["file_path"] for p in parts}) == 1  # both parts wrote the same playlist
    final = await stop_and_wait(stack, job_id)

    async def ready() -> list[dict[str, Any]] | None:
        files = (await job(stack, job_id))["recordedFiles"]
        return files if [f["status"] for f in files] == ["ready"] else None

    (playlist,) = await eventually(ready, timeout=30, what="the playlist ready")
    assert final["paused"] is False
    text = Path(playlist["file_path"]).read_text()
    assert text.count("#EXT-X-DISCONTINUITY") == 1, text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    segments = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(segments) == len(set(segments)) >= 2  # numbering went on: nothing overwritten
    assert all((Path(playlist["file_path"]).parent / s).exists() for s in segments)
    stored = await db[Collections.FILES].find_one({"entity_id": job_id})
    report = stored["integrity"]
    assert report["parts"] == 2
    assert len(report["gaps"]) == 1
    assert report["gaps"][0]["cause"] == "pause"
    info = await ffprobe(playlist["file_path"], analyzeduration=5.0)
    assert float(info["format"]["duration"]) >= 5.0


async def test_a_session_whose_owner_died_and_that_was_stopped_is_finished_elsewhere(
    stack, db, srt_source
):
    first = await stack.start_recorder()
    await recorder_ready(stack, db)
    job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]
    await wait_recorded(stack, job_id, 5.0)
    os.kill(first.pid, signal.SIGKILL)
    await first.proc.wait()
    await stack.ok("stop", {"id": job_id})  # nobody will run it again: nobody claims it
    await stack.start_recorder()

    async def joined() -> dict[str, Any] | None:
        files = (await job(stack, job_id))["recordedFiles"]
        return files[0] if [f["status"] for f in files] == ["ready"] else None

    ready = await eventually(joined, timeout=40, what="the dead node's part finished")
    info = await probe(ready["file_path"])
    av_streams(info)
    assert duration_s(info) >= 3.0  # 5 s recorded; a kill loses at most the unflushed GOP
    stored = await db[Collections.FILES].find_one({"entity_id": job_id})
    assert stored["integrity"]["parts"] == 1
    assert stored["integrity"]["duration_ms"] >= 3000


async def test_reprocess_file_remuxes_reports_and_handles_a_missing_file(stack, db, srt_source):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        body = job_body(srt_source.url, output_format="mkv", seamless=False)
        job_id = (await stack.ok("create", body))["id"]
        await wait_recorded(stack, job_id, 3.0)
        (recording,) = (await job(stack, job_id))["recordedFiles"]
        ref = {"record_id": job_id, "file_id": recording["id"]}
        r = await stack.call("reprocessFile", ref)
        assert r.status_code == 400
        assert r.json()["error"]["field"] == "file_id"
        assert "recording" in r.json()["error"]["message"]
        (ready,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
        assert ready["status"] == "ready"
        # Every ready file carries an integrity report, joined or not.
        assert ready["integrity"]["parts"] == 1
        assert ready["integrity"]["duration_ms"] >= 2500
        assert abs(ready["integrity"]["expected_ms"] - ready["integrity"]["duration_ms"]) < 3000
        assert ready["ready_at"]
        assert ready["closed_at"]

        queued = await stack.ok("reprocessFile", ref)
        assert queued["status"] == "processing"

        async def done() -> dict[str, Any] | None:
            (f,) = (await job(stack, job_id))["recordedFiles"]
            return f if f["status"] == "ready" and f.get("reprocessed_at") else None

        again = await eventually(done, timeout=30, what="the file reprocessed")
        assert abs(again["duration_ms"] - ready["duration_ms"]) <= 500
        av_streams(await probe(again["file_path"]))
        types = ev.types(job_id)
        assert types.index("processing_started") < types.index("processing_complete")
        assert "processing_progress" in types[types.index("processing_started") :]

        os.unlink(again["file_path"])
        await stack.ok("reprocessFile", ref)

        async def failed() -> dict[str, Any] | None:
            (f,) = (await job(stack, job_id))["recordedFiles"]
            return f if f["status"] == "failed" else None

        gone = await eventually(failed, timeout=30, what="the missing file failed")
        assert gone["failure_reason"] == "missing"
        assert gone["failed_at"]
        await eventually(lambda: "file_failed" in ev.types(job_id), timeout=10, what="file_failed")


async def test_an_audio_only_source_records_to_mp4_without_the_thumbnail(stack, db, tmp_path):
    port = free_port("udp")
    # A listener serving one caller at a time, again after each (the first caller goes away).
    serve = (
        "while true; do ffmpeg -hide_banner -loglevel error -re -f lavfi"
        " -i sine=frequency=440:sample_rate=48000 -c:a aac -f mpegts"
        f" 'srt://127.0.0.1:{port}?mode=listener' </dev/null; sleep 0.2; done"
    )
    source = subprocess.Popen(["sh", "-c", serve], start_new_session=True)
    try:
        await stack.start_recorder()
        await recorder_ready(stack, db)
        body = job_body(f"srt://127.0.0.1:{port}", seamless=False)
        job_id = (await stack.ok("create", body))["id"]
        # The first try has a thumbnail output with nothing to map; the next one drops it.
        await wait_recorded(stack, job_id, 3.0)
        (ready,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
        info = await probe(ready["file_path"])
        assert [s["codec_type"] for s in info["streams"]] == ["audio"]
        assert duration_s(info) >= 2.0
        assert not list(Path(ready["file_path"]).parent.glob(".thumb*"))
    finally:
        os.killpg(source.pid, signal.SIGKILL)
        source.wait()
