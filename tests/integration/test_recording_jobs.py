"""Recording jobs end to end: API → hint → recorder → supervised FFmpeg → files, live sources.

Real nats-server, real FerretDB, real FFmpeg; recorders run as subprocesses (a test can SIGKILL
one). Sources are live FFmpeg processes (see ``support.media``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.events import Events
from support.media import av_streams, ffmpeg_children, ffprobe
from support.seeds import recording_payload
from support.stack import Stack, running_stack
from support.wait import eventually

from reelhouse.common.mongo import Collections


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


async def recorder_ready(stack: Stack, db, count: int = 1) -> None:
    async def enough() -> bool:
        query = {"service": "recorder", "state": "running"}
        return await db[Collections.NODES].count_documents(query) >= count

    await eventually(enough, timeout=30, what=f"{count} recorder node(s)")


def job_body(url: str, index: int = 0, *, input_type: str = "INPUT_TYPE_SRT_URL", **changes):
    body = recording_payload(index, active=True, **changes)
    body["input"]["input_stream_url"] = url
    body["input"]["input_type"] = input_type
    return body


async def job(stack: Stack, job_id: str) -> dict[str, Any]:
    return await stack.ok("getById", {"id": job_id})


async def stat_of(stack: Stack, job_id: str) -> dict[str, Any] | None:
    for row in await stack.ok("getStat", {}):
        if row["processData"]["id"] == job_id:
            return row["processData"]
    return None


async def out_time_s(stack: Stack, job_id: str) -> float:
    data = await stat_of(stack, job_id)
    if data is None or not data["out_time_ms"].isdigit():
        return 0.0
    return int(data["out_time_ms"]) / 1e6  # FFmpeg's value: microseconds


async def wait_recorded(stack: Stack, job_id: str, seconds: float, timeout: float = 40) -> float:
    async def enough() -> float:
        t = await out_time_s(stack, job_id)
        return t if t >= seconds else 0.0

    return await eventually(enough, timeout=timeout, what=f"{seconds} s recorded", interval=0.2)


async def stop_and_wait(stack: Stack, job_id: str, timeout: float = 30) -> dict[str, Any]:
    await stack.ok("stop", {"id": job_id})

    async def released() -> dict[str, Any] | None:
        j = await job(stack, job_id)
        return j if j["runtime"] is None else None

    return await eventually(released, timeout=timeout, what="the worker to let go")


async def probe(path: str | Path) -> dict[str, Any]:
    return await ffprobe(path, analyzeduration=5.0)


def duration_s(info: dict[str, Any]) -> float:
    return float(info["format"]["duration"])


async def test_seed_job_on_live_srt_records_mp4_with_stats_and_events(
    stack, db, srt_source, service_env
):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    async with Events(
        service_env["REELHOUSE_NATS_URL"], service_env["REELHOUSE_SUBJECT_PREFIX"]
    ) as ev:
        created = await stack.ok("create", job_body(srt_source.url))
        job_id = created["id"]
        # The bar: live stats within 5 s of create.
        stats = await eventually(
            lambda: stat_of(stack, job_id), timeout=5, what="getStat for the job", interval=0.1
        )
        assert set(stats) >= {"id", "frame", "fps", "bitrate", "bitrate_kbits", "total_size",
                              "out_time_ms", "speed", "progress"}  # fmt: skip
        running = await job(stack, job_id)
        assert running["runtime"]["state"] == "running"
        assert running["runtime"]["node"] == "recorder-1"
        recorded = await wait_recorded(stack, job_id, 6.0)
        stopped = await stop_and_wait(stack, job_id)
        await eventually(lambda: "job_stopped" in ev.types(job_id), timeout=5, what="job_stopped")
    files = stopped["recordedFiles"]
    assert len(files) == 1
    record = files[0]
    assert record["status"] == "ready"
    assert record["file_name"].startswith("main-program-archive-")
    assert record["file_name"].endswith(".mp4")
    assert record["entity_id"] == job_id
    assert record["entity_name"] == "Main program archive"
    assert record["module_name"] == "MODULE_RECORDINGS"
    assert record["output_format"] == "mp4"
    assert record["size_bytes"] == os.path.getsize(record["file_path"])
    info = await probe(record["file_path"])
    video, audio = av_streams(info)
    assert video["codec_name"] == "h264"
    assert audio["codec_name"] == "aac"
    assert audio["sample_rate"] == "44100"  # the seed transcodes audio to AAC 44.1 kHz
    # Recorded at least `recorded` seconds (the stat seen) and at most ~2 s more before stop.
    assert recorded - 1 <= duration_s(info) <= recorded + 3
    assert abs(record["duration_ms"] / 1000 - duration_s(info)) <= 0.1
    kinds = ev.types(job_id)
    for expected in ("job_started", "file_opened", "file_closed", "job_stopped"):
        assert expected in kinds, kinds
    assert kinds.index("file_opened") < kinds.index("file_closed") < kinds.index("job_stopped")
    assert await stack.ok("getStat", {}) == []


async def test_split_by_time_registers_contiguous_segments_while_running(stack, db, srt_source):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    body = job_body(srt_source.url, 1, recording_mode_settings={"hours": 0, "minutes": 0,
                                                                  "seconds": 4})  # fmt: skip
    job_id = (await stack.ok("create", body))["id"]

    async def three_segments_while_running() -> list[dict[str, Any]] | None:
        j = await job(stack, job_id)
        ready = [f for f in j["recordedFiles"] if f["status"] == "ready"]
        if len(ready) >= 3:
            assert j["runtime"]["state"] == "running"  # registered while the job still runs
            return ready
        return None

    segments = await eventually(three_segments_while_running, timeout=40, what="3 segments")
    # getStat's bitrate is what the segments hold (the segment muxer reports no size of its
    # own: the recorder counts what this process wrote).
    stat = await stat_of(stack, job_id)
    assert stat is not None
    written = sum(s["size_bytes"] for s in segments[:3]) * 8 / 1000
    media_s = sum(s["duration_ms"] for s in segments[:3]) / 1000
    assert int(stat["total_size"]) > 0, stat
    assert 0.6 * written / media_s <= stat["bitrate_kbits"] <= 1.4 * written / media_s, stat
    await stop_and_wait(stack, job_id)
    for seg in segments[:3]:
        info = await probe(seg["file_path"])
        av_streams(info)
        assert 3.0 <= duration_s(info) <= 5.0, seg
    # Contiguous: in the segment muxer's list (media times) each segment starts where the
    # previous one ended, and the names carry those start times.
    (listing,) = (stack.storage_root / job_id).glob(".part-*.csv")
    rows = [line.split(",") for line in listing.read_text().splitlines() if line]
    assert len(rows) >= 3
    for prev, nxt in itertools.pairwise(rows):
        assert abs(float(nxt[1]) - float(prev[2])) < 0.1, (prev, nxt)
    starts = [datetime.strptime(s["file_name"][-23:-4], "%Y-%m-%d_%H-%M-%S") for s in segments]
    assert len(set(starts)) == len(starts)
    for a, b in itertools.pairwise(starts[:3]):
        assert 3 <= (b - a).total_seconds() <= 5, (a, b)


async def test_kill_9_of_the_recorder_leaves_a_playable_file_and_another_takes_over(
    stack, db, srt_source
):
    first = await stack.start_recorder()
    await recorder_ready(stack, db)
    job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]
    await wait_recorded(stack, job_id, 5.0)
    assert (await job(stack, job_id))["runtime"]["node"] == "recorder-1"
    ffmpeg_pids = [pid for pid, _ in ffmpeg_children(first.pid)]
    assert len(ffmpeg_pids) == 1
    second = await stack.start_recorder()
    await recorder_ready(stack, db, count=2)
    os.kill(first.pid, signal.SIGKILL)
    await first.proc.wait()
    # FFmpeg dies with its worker (it does not record on as an orphan).
    await eventually(lambda: not os.path.exists(f"/proc/{ffmpeg_pids[0]}"), timeout=10,
                     what="the orphaned FFmpeg to exit")  # fmt: skip

    async def taken_over() -> dict[str, Any] | None:
        j = await job(stack, job_id)
        rt = j["runtime"] or {}
        return j if rt.get("node") == "recorder-2" and rt.get("state") == "running" else None

    await eventually(taken_over, timeout=30, what="recorder-2 to take the job over")
    assert ffmpeg_children(second.pid)
    await wait_recorded(stack, job_id, 3.0)
    # Both parts are on the job while the session runs; the dead node's part was finished.
    parts = (await job(stack, job_id))["recordedFiles"]
    assert len(parts) == 2, parts
    first_part = await probe(parts[0]["file_path"])
    video, _audio = av_streams(first_part)
    assert video["codec_name"] == "h264"
    assert duration_s(first_part) >= 4.0  # at most the last GOP (1 s) lost of >= 5 s
    # The session ends with the stop: recorder-2 joins both parts into one file.
    final = await stop_and_wait(stack, job_id)
    files = final["recordedFiles"]
    assert len(files) == 1, files
    assert files[0]["status"] == "ready"
    joined = await probe(files[0]["file_path"])
    assert duration_s(joined) >= duration_s(first_part) + 2.5
    stored = await db[Collections.FILES].find_one({"entity_id": job_id})
    assert stored["integrity"]["parts"] == 2


async def test_source_drop_of_10_s_resumes_by_itself_into_a_second_part(
    stack, db, media_source_factory
):
    source = await media_source_factory("srt")
    await stack.start_recorder()
    await recorder_ready(stack, db)
    job_id = (await stack.ok("create", job_body(source.url)))["id"]
    await wait_recorded(stack, job_id, 3.0)
    await source.stop()

    async def retrying() -> bool:
        return ((await job(stack, job_id))["runtime"] or {}).get("state") == "retrying"

    await eventually(retrying, timeout=30, what="runtime.state retrying")
    await asyncio.sleep(10)  # the scenario itself: the source stays away for 10 s
    assert ((await job(stack, job_id))["runtime"] or {}).get("state") in ("retrying", "starting")
    await source.start()

    async def second_part_running() -> bool:
        j = await job(stack, job_id)
        return j["runtime"]["state"] == "running" and len(j["recordedFiles"]) == 2

    await eventually(second_part_running, timeout=30, what="a second part recording")
    await wait_recorded(stack, job_id, 2.0)
    first_part = (await job(stack, job_id))["recordedFiles"][0]
    assert duration_s(await probe(first_part["file_path"])) >= 2.0
    final = await stop_and_wait(stack, job_id)
    files = final["recordedFiles"]
    assert len(files) == 1  # seamless (the default): one file for the session
    assert files[0]["status"] == "ready"
    av_streams(await probe(files[0]["file_path"]))
    stored = await db[Collections.FILES].find_one({"entity_id": job_id})
    assert stored["integrity"]["parts"] == 2
    (gap,) = stored["integrity"]["gaps"]
    assert gap["duration_ms"] >= 9_000  # the source was away 10 s; the gap is reported


async def test_seamless_session_with_two_source_drops_is_one_file_with_two_gaps(
    stack, db, media_source_factory
):
    source = await media_source_factory("srt")
    await stack.start_recorder()
    await recorder_ready(stack, db)
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        job_id = (await stack.ok("create", job_body(source.url)))["id"]
        live = []
        for part in (1, 2, 3):

            async def recording_part(n: int = part) -> bool:
                j = await job(stack, job_id)
                return (j["runtime"] or {}).get("state") == "running" and len(
                    j["recordedFiles"]
                ) == n

            await eventually(recording_part, timeout=40, what=f"part {part} recording")
            before = await out_time_s(stack, job_id)
            await wait_recorded(stack, job_id, before + 3.0)
            live.append(await out_time_s(stack, job_id))
            if part < 3:
                await source.stop()

                async def retrying() -> bool:
                    state = ((await job(stack, job_id))["runtime"] or {}).get("state")
                    return state == "retrying"

                await eventually(retrying, timeout=30, what="the job retrying")
                await asyncio.sleep(3)  # the scenario itself: the source stays away 3 s more
                await source.start()
        final = await stop_and_wait(stack, job_id)
        files = final["recordedFiles"]
        assert len(files) == 1, files
        assert files[0]["status"] == "ready"
        info = await probe(files[0]["file_path"])
        av_streams(info)
        # The joined file holds the three live periods (at most a GOP lost at each cut).
        assert duration_s(info) >= sum(live) - 3.0, (duration_s(info), live)
        stored = await db[Collections.FILES].find_one({"entity_id": job_id})
        assert stored["integrity"]["parts"] == 3
        assert len(stored["integrity"]["gaps"]) == 2
        report = stored["integrity"]
        gaps_ms = sum(g["duration_ms"] for g in report["gaps"])
        assert all(g["duration_ms"] >= 3000 for g in report["gaps"])
        # The wall clock from the first media to the last spans the media and the gaps.
        span = report["duration_ms"] + gaps_ms
        assert abs(report["expected_ms"] - span) <= 2000, report["periods"]

        async def joined_events() -> bool:
            types = ev.types(job_id)
            return "processing_complete" in types and "file_ready" in types

        await eventually(joined_events, timeout=10, what="processing_complete and file_ready")
        assert ev.types(job_id).index("processing_started") < ev.types(job_id).index(
            "processing_complete"
        )


async def test_update_restarts_a_running_job_and_remove_file_and_remove_delete(
    stack, db, srt_source
):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    created = await stack.ok("create", job_body(srt_source.url))
    job_id = created["id"]
    await wait_recorded(stack, job_id, 2.0)
    body = job_body(srt_source.url, output_format="mkv", recording_name="Renamed archive")
    body["id"] = job_id
    updated = await stack.ok("update", body)
    assert updated["output_format"] == "mkv"

    async def mkv_part() -> list[dict[str, Any]] | None:
        j = await job(stack, job_id)
        mkv = [f for f in j["recordedFiles"] if f["file_name"].endswith(".mkv")]
        return j["recordedFiles"] if mkv and j["runtime"]["state"] == "running" else None

    files = await eventually(mkv_part, timeout=30, what="the job restarted as mkv")
    assert files[0]["file_name"].startswith("main-program-archive-")
    assert files[0]["status"] == "ready"  # the mp4 part was closed by the restart
    assert files[1]["file_name"].startswith("renamed-archive-")
    await wait_recorded(stack, job_id, 1.0)

    # removeFile of a file still being written is refused; of a closed one deletes it.
    r = await stack.call("removeFile", {"record_id": job_id, "file_id": files[1]["id"]})
    assert r.status_code == 409
    assert await stack.ok("removeFile", {"record_id": job_id, "file_id": files[0]["id"]}) == {
        "success": True
    }
    assert not os.path.exists(files[0]["file_path"])
    assert await db[Collections.FILES].count_documents({"entity_id": job_id}) == 1
    left = (await job(stack, job_id))["recordedFiles"]
    assert [f["id"] for f in left] == [files[1]["id"]]

    removed = await stack.ok("remove", {"id": job_id}, verb="DELETE")
    assert removed["id"] == job_id
    assert not os.path.exists(files[1]["file_path"])
    assert not (stack.storage_root / job_id).exists()
    for name in (Collections.RECORDINGS, Collections.INPUTS, Collections.FILES):
        assert await db[name].count_documents({}) == 0, name
    assert stack.recorders[0].proc.returncode is None
    await eventually(lambda: not ffmpeg_children(stack.recorders[0].pid), timeout=10,
                     what="no FFmpeg left on the recorder")  # fmt: skip


FORMATS = {
    "mp4": ["video", "audio"],
    "mkv": ["video", "audio"],
    "flv": ["video", "audio"],
    "mpegts": ["video", "audio"],
    "avi": ["video", "audio"],
    "mp3": ["audio"],
    "m3u8": ["video", "audio"],
}


async def test_every_output_format_from_a_live_hls_input(stack, db, hls_source):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    jobs = {}
    for fmt in FORMATS:
        body = job_body(hls_source.url, output_format=fmt, input_type="INPUT_TYPE_HLS_URL",
                        recording_name=f"format {fmt}")  # fmt: skip
        jobs[fmt] = (await stack.ok("create", body))["id"]
    for job_id in jobs.values():
        await wait_recorded(stack, job_id, 4.0, timeout=60)
    # Every format shows media moving in getStat, the HLS muxer too (it reports no size of its
    # own: the recorder counts the segments this process completed, so once the first is).
    for fmt, job_id in jobs.items():

        async def moving(job_id: str = job_id) -> dict[str, Any] | None:
            stat = await stat_of(stack, job_id)
            return stat if stat is not None and stat["bitrate_kbits"] > 0 else None

        await eventually(moving, timeout=20, what=f"a bitrate for {fmt}")
    for fmt, job_id in jobs.items():
        final = await stop_and_wait(stack, job_id)
        assert len(final["recordedFiles"]) == 1, (fmt, final["recordedFiles"])
        record = final["recordedFiles"][0]
        assert record["status"] == "ready"
        assert record["size_bytes"] > 0
        info = await probe(record["file_path"])
        kinds = [s["codec_type"] for s in info["streams"]]
        assert sorted(kinds) == sorted(FORMATS[fmt]), (fmt, kinds)
        assert duration_s(info) >= 3.0, fmt


@pytest.mark.parametrize(
    ("kind", "input_type"), [("rtmp", "INPUT_TYPE_RTMP_URL"), ("udp", "INPUT_TYPE_UDP_URL")]
)
async def test_rtmp_and_udp_inputs_record(stack, db, media_source_factory, kind, input_type):
    await stack.start_recorder()
    await recorder_ready(stack, db)
    source = await media_source_factory(kind)  # UDP: pushes to the port the recorder binds
    job_id = (await stack.ok("create", job_body(source.url, input_type=input_type)))["id"]
    await wait_recorded(stack, job_id, 3.0)
    final = await stop_and_wait(stack, job_id)
    record = final["recordedFiles"][0]
    video, audio = av_streams(await probe(record["file_path"]))
    assert video["codec_name"] == "h264"
    assert audio["codec_name"] == "aac"


async def test_a_full_disk_fails_the_job_visibly_without_a_restart_storm(
    stack, db, srt_source, tmp_path
):
    small = tmp_path / "small-disk"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs to mount a 1 MiB tmpfs (root)")
    try:
        await stack.start_recorder(
            REELHOUSE_STORAGE_ROOT=str(small), REELHOUSE_DISK_FULL_RETRY_S="30"
        )
        await recorder_ready(stack, db)
        async with Events(
            stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]
        ) as ev:
            job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]

            async def failed_event() -> dict[str, Any] | None:
                for e in ev.received:
                    if e.get("job_id") == job_id and e["type"] == "job_failed":
                        return e
                return None

            event = await eventually(failed_event, timeout=60, what="job_failed (disk full)")
            assert "disk full" in event["reason"]

            async def degraded() -> dict[str, Any] | None:
                rt = (await job(stack, job_id))["runtime"] or {}
                return rt if rt.get("state") == "retrying" and rt.get("degraded") else None

            runtime = await eventually(degraded, timeout=20, what="runtime.degraded")
            assert "No space left on device" in runtime["degraded"]
            restarts = runtime["restarts"]
            seen = time.monotonic()
            await eventually(lambda: time.monotonic() - seen > 8, timeout=10, what="8 s")
            later = (await job(stack, job_id))["runtime"]
            assert later["restarts"] == restarts  # waiting 30 s, not a restart storm
            assert ev.types(job_id).count("job_failed") == 1
            await stop_and_wait(stack, job_id)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
