"""Playback by wall-clock time (issue 24): one live recording split into 2 s MPEG-TS segments,
with a source drop in the middle, read back as spans and gaps, as one mp4 or ts file across
segments and the gap (cut at keyframes, or exactly), and as an HLS VOD playlist.

The recording is made once for the module (about 30 s): real nats-server, FerretDB, recorder,
FFmpeg and a live SRT source.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from support.infra import settings_env
from support.media import MediaSpec, av_streams, ffprobe, make_source
from support.seeds import recording_payload
from support.stack import Stack, running_stack
from support.wait import eventually

from reelhouse.common.mongo import Collections

pytestmark = pytest.mark.slow

SEGMENT_S = 2


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def ready_segments(db: Any, job_id: str) -> list[dict[str, Any]]:
    cursor = db[Collections.FILES].find({"entity_id": job_id, "status": "ready"})
    return sorted([doc async for doc in cursor], key=lambda d: d["integrity"]["periods"][0]["to"])


@pytest.fixture(scope="module")
async def recorded(infra, tmp_path_factory):
    """(stack, job id, records): a split recording with one source drop, stopped."""
    tmp = tmp_path_factory.mktemp("playback")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REELHOUSE_")},
        **settings_env(infra.nats_url, infra.mongodb_url, tmp, uuid.uuid4().hex[:12]),
        "REELHOUSE_ARCHIVE_ROOT": str(tmp / "archive"),
        "REELHOUSE_PROBE_MS": "500",
    }
    client = AsyncMongoClient(infra.mongodb_url, tz_aware=True)
    db = client[env["REELHOUSE_MONGODB_DATABASE"]]
    source = make_source("srt", MediaSpec())
    await source.start()
    try:
        async with running_stack(env, tmp) as stack:
            await stack.start_recorder()
            body = recording_payload(1, active=True, output_format="mpegts")
            body["recording_mode_settings"] = {"hours": 0, "minutes": 0, "seconds": SEGMENT_S,
                                               "align_to_clock": True}  # fmt: skip
            body["input"]["input_stream_url"] = source.url
            job_id = (await stack.ok("create", body))["id"]

            async def segments(n: int) -> bool:
                return len(await ready_segments(db, job_id)) >= n

            await eventually(lambda: segments(4), timeout=40, what="4 segments", interval=0.2)
            before = len(await ready_segments(db, job_id))
            await source.stop()

            async def retrying() -> bool:
                j = await stack.ok("getById", {"id": job_id})
                return (j["runtime"] or {}).get("state") == "retrying"

            await eventually(retrying, timeout=30, what="the drop noticed", interval=0.2)
            await asyncio.sleep(2)  # the scenario: the source stays away a little longer
            await source.start()
            await eventually(lambda: segments(before + 4), timeout=40, what="4 more segments",
                             interval=0.2)  # fmt: skip
            await stack.ok("stop", {"id": job_id})

            async def released() -> bool:
                return (await stack.ok("getById", {"id": job_id}))["runtime"] is None

            await eventually(released, timeout=30, what="the recorder to let go", interval=0.2)
            yield stack, job_id, await ready_segments(db, job_id)
    finally:
        await source.stop()
        await client.drop_database(env["REELHOUSE_MONGODB_DATABASE"])
        await client.close()


async def playback(stack: Stack, job_id: str, **body: Any) -> dict[str, Any]:
    return await stack.ok("getPlayback", {"id": job_id, **body})


async def test_get_playback_shows_two_spans_and_the_source_gap(recorded):
    stack, job_id, records = recorded
    answer = await playback(stack, job_id)
    assert len(answer["spans"]) == 2, answer
    (gap,) = answer["gaps"]
    assert gap["cause"] == "interruption"
    assert gap["duration_ms"] >= 2000, gap  # the source was away >= 2 s, plus the restart
    first, second = answer["spans"]
    assert parse(first["end"]) <= parse(gap["from"]) + timedelta(seconds=0.01)
    assert parse(second["start"]) == parse(gap["to"])
    ids = {str(r["_id"]) for r in records}
    assert set(first["files"]) | set(second["files"]) == ids
    assert not set(first["files"]) & set(second["files"])
    total = sum(r["duration_ms"] for r in records) / 1000
    assert abs(answer["media_duration"] - total) < 0.01
    assert abs(first["duration"] + second["duration"] - total) < 0.01

    # A window: only what lies inside it.
    window = await playback(stack, job_id, **{"from": gap["to"]})
    assert len(window["spans"]) == 1
    assert window["gaps"] == []
    assert window["spans"][0]["files"] == second["files"]

    for body, field, status in [
        ({"id": "nope"}, "id", 400),
        ({"id": job_id, "from": "yesterday"}, "from", 400),
        ({"id": job_id, "from": gap["to"], "to": gap["from"]}, "to", 400),
        ({"id": job_id, "extra": 1}, "extra", 400),
        ({"id": "0" * 24}, "id", 404),
    ]:
        r = await stack.call("getPlayback", body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["field"] == field, (body, r.text)


def range_across_the_gap(answer: dict[str, Any]) -> tuple[datetime, float, float]:
    """A range from 3 s before the gap to 3.3 s after it: the last two segments before, the
    first two after; (start, duration, seconds of media in it)."""
    first, second = answer["spans"]
    start = parse(first["end"]) - timedelta(seconds=3)
    end = parse(second["start"]) + timedelta(seconds=3.3)
    return start, (end - start).total_seconds(), 3 + 3.3


async def fetch(stack: Stack, url: str, tmp_path: Path, name: str) -> tuple[Path, Any]:
    r = await stack.client.get(url)
    assert r.status_code == 200, r.text[:300]
    out = tmp_path / name
    out.write_bytes(r.content)
    return out, r


def video_seconds(info: dict[str, Any]) -> float:
    video, _audio = av_streams(info)
    return float(video["nb_read_frames"]) / 25  # the test source's frame rate


@pytest.mark.parametrize("fmt", ["mp4", "ts"])
async def test_one_file_across_three_segments_and_the_gap(recorded, tmp_path, fmt):
    stack, job_id, _ = recorded
    answer = await playback(stack, job_id)
    start, duration, media = range_across_the_gap(answer)
    end = start + timedelta(seconds=duration)
    window = await playback(stack, job_id, **{"from": iso(start), "to": iso(end)})
    assert sum(len(span["files"]) for span in window["spans"]) >= 3  # segments of the range
    assert window["gaps"] == answer["gaps"]
    got = await stack.ok("getPlaybackUrl", {"id": job_id, "start": iso(start),
                                            "duration": duration, "format": fmt})  # fmt: skip
    assert got["url"].startswith(f"/api/recording/playback/{job_id}.{fmt}?")
    assert "token" not in got["url"]
    assert parse(got["expires"]) > datetime.now(UTC)
    assert abs(got["media_duration"] - media) < 0.4  # segment ends are estimates (last write)
    out, r = await fetch(stack, got["url"], tmp_path, f"range.{fmt}")
    assert r.headers["content-type"] == {"mp4": "video/mp4", "ts": "video/mp2t"}[fmt]
    (gap,) = json.loads(r.headers["x-reelhouse-gaps"])
    assert gap == answer["gaps"][0]
    assert r.headers["x-reelhouse-gaps-count"] == "1"
    info = await ffprobe(out, extra_args=["-count_frames"])
    video, audio = av_streams(info)
    assert video["codec_name"] == "h264"
    assert audio["codec_name"] == "aac"
    # Cut at keyframes (1 s GOP): at most one GOP more at the start of each side of the gap.
    assert media - 0.3 <= video_seconds(info) <= media + 2.2, video_seconds(info)


async def test_a_precise_cut_is_exact(recorded, tmp_path):
    stack, job_id, _ = recorded
    answer = await playback(stack, job_id)
    first, _second = answer["spans"]
    start = parse(first["start"]) + timedelta(seconds=2.52)  # inside the second segment
    got = await stack.ok("getPlaybackUrl", {"id": job_id, "start": iso(start), "duration": 3.4,
                                            "format": "mp4", "precise": True})  # fmt: skip
    out, r = await fetch(stack, got["url"], tmp_path, "precise.mp4")
    assert json.loads(r.headers["x-reelhouse-gaps"]) == []
    # Exactly the media the timeline has in the range (3.4 s of wall clock; less when the live
    # source ran slower than real time on a loaded machine).
    media = float(r.headers["x-reelhouse-media-duration"])
    assert 3.0 <= media <= 3.8  # segment ends are estimates: pieces may overlap a little
    info = await ffprobe(out, extra_args=["-count_frames"])
    assert abs(video_seconds(info) - media) <= 0.1, (video_seconds(info), media)


async def test_hls_playlist_has_a_date_on_every_segment_and_a_discontinuity_at_the_gap(recorded):
    stack, job_id, records = recorded
    answer = await playback(stack, job_id)
    start = parse(answer["spans"][0]["start"])
    end = parse(answer["spans"][1]["end"])
    got = await stack.ok("getPlaybackUrl", {"id": job_id, "start": iso(start), "format": "hls",
                                            "duration": (end - start).total_seconds()})  # fmt: skip
    r = await stack.client.get(got["url"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    lines = r.text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in lines
    assert lines[-1] == "#EXT-X-ENDLIST"
    uris = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    assert len(uris) == len(records)
    dates = []
    for at in uris:  # each segment: (discontinuity), date, duration, URI
        assert lines[at - 1].startswith("#EXTINF:")
        assert lines[at - 2].startswith("#EXT-X-PROGRAM-DATE-TIME:"), lines[at - 2]
        dates.append(parse(lines[at - 2].split(":", 1)[1]))
    assert dates == sorted(dates)
    gap_to = parse(answer["gaps"][0]["to"])
    after_gap = dates.index(gap_to)
    breaks = [n for n, at in enumerate(uris) if lines[at - 3] == "#EXT-X-DISCONTINUITY"]
    assert breaks == [after_gap]  # aligned MPEG-TS segments: timestamps run on within a part
    segment = await stack.client.get(lines[uris[0]])
    assert segment.status_code == 200
    assert segment.content[:1] == b"\x47"  # MPEG-TS sync byte
    assert "token" not in r.text


async def test_bad_requests_name_their_field_and_start_nothing(recorded):
    stack, job_id, _ = recorded
    answer = await playback(stack, job_id)
    start = answer["spans"][0]["start"]
    good = {"id": job_id, "start": start, "duration": 4, "format": "mp4"}
    for changes, field, status in [
        ({"id": "x"}, "id", 400),
        ({"format": "mkv"}, "format", 400),
        ({"start": "soon"}, "start", 400),
        ({"duration": 0}, "duration", 400),
        ({"duration": "4"}, "duration", 400),
        ({"duration": 6 * 3600 + 1}, "duration", 400),
        ({"format": "hls", "precise": True}, "precise", 400),
        ({"precise": "yes"}, "precise", 400),
        ({"id": "0" * 24}, "id", 404),
        ({"start": "2001-01-01T00:00:00Z"}, "start", 404),
    ]:
        r = await stack.call("getPlaybackUrl", {**good, **changes})
        assert r.status_code == status, (changes, r.text)
        error = r.json()["error"]
        assert error["field"] == field, (changes, error)
    url = (await stack.ok("getPlaybackUrl", good))["url"]
    for bad in (url.replace("duration=4000", "duration=5000"), url[:-4] + "0000",
                url.replace(".mp4?", ".ts?")):  # fmt: skip
        r = await stack.client.get(bad)
        assert r.status_code == 403, bad
        assert r.json()["error"]["field"] == "signature"
