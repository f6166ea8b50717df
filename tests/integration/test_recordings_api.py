"""The Recordings API without media: shapes exactly as the seed shows, validation, listing."""

from __future__ import annotations

import re

import pytest
from support.media import ffmpeg_children
from support.seeds import recording_payload, seed_payloads
from support.stack import running_stack
from support.wait import eventually

from reelhouse.common.mongo import Collections

ID = re.compile(r"^[0-9a-f]{24}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


def assert_job_shape(job: dict, payload: dict) -> None:
    assert ID.match(job["_id"])
    assert job["id"] == job["_id"]
    assert job["success"] is True
    assert STAMP.match(job["created"])
    assert STAMP.match(job["modified"])
    for key in ("recording_name", "recording_type", "output_format", "recording_mode",
                "recording_mode_settings", "modify_audio", "modify_video", "delete_after",
                "active"):  # fmt: skip
        assert job[key] == payload[key], key
    assert job["transcoding"]["audio_transcoding"] == payload["transcoding"]["audio_transcoding"]
    assert isinstance(job["input"], list)
    assert len(job["input"]) == 1
    inp = job["input"][0]
    assert ID.match(inp["_id"])
    assert inp["id"] == inp["_id"]
    assert inp["_id"] != job["_id"]
    for key, value in payload["input"].items():
        assert inp[key] == value, key
    assert isinstance(job["recordedFiles"], list)


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_seed_payloads_create_jobs_shaped_like_the_seed(stack, db, index):
    payload = recording_payload(index, active=False)
    job = await stack.ok("create", payload)
    assert_job_shape(job, payload)
    assert job["recordedFiles"] == []
    assert job["runtime"] is None
    stored = await db[Collections.RECORDINGS].find_one({})
    assert stored["tenant"] == "default"
    assert str(stored["_id"]) == job["_id"]
    assert await db[Collections.INPUTS].count_documents({}) == 1


async def test_get_by_id_get_all_get_count_and_filters(stack):
    a = await stack.ok("create", recording_payload(0, active=False))
    b = await stack.ok("create", recording_payload(1, active=False))
    assert await stack.ok("getById", {"id": a["id"]}) == a
    assert await stack.ok("getCount", {}) == {"count": 2}
    seed_list = seed_payloads("recordings-api.txt", "/api/recording/getAll")[0]
    listed = await stack.ok("getAll", seed_list)
    assert [j["id"] for j in listed] == [a["id"], b["id"]]  # sort {created: 1}
    assert all(j["success"] is True and isinstance(j["input"], list) for j in listed)
    newest_first = await stack.ok("getAll", {"sort": {"created": -1}, "limit": 1})
    assert [j["id"] for j in newest_first] == [b["id"]]
    assert [j["id"] for j in await stack.ok("getAll", {"skip": 1})] == [b["id"]]
    by_mode = {"filter": {"recording_mode": "RECORDING_MODE_SPLIT_BY_TIME"}}
    assert [j["id"] for j in await stack.ok("getAll", by_mode)] == [b["id"]]
    assert await stack.ok("getCount", by_mode) == {"count": 1}
    assert await stack.ok("getAll", {"filter": {"id": a["id"]}}) == [a]


async def test_update_changes_config_and_input_and_keeps_ids(stack, db):
    job = await stack.ok("create", recording_payload(0, active=False))
    body = seed_payloads("recordings-api.txt", "/api/recording/update")[0]
    body["id"] = job["id"]
    body["input"]["input_stream_url"] = "srt://127.0.0.1:2000"
    updated = await stack.ok("update", body)
    assert updated["recording_name"] == "Main program archive updated"
    assert updated["input"][0]["_id"] == job["input"][0]["_id"]
    assert updated["input"][0]["input_stream_url"] == "srt://127.0.0.1:2000"
    assert updated["created"] == job["created"]
    assert updated["modified"] >= job["modified"]
    stored = await db[Collections.RECORDINGS].find_one({})
    assert stored["generation"] == 1


async def test_start_and_stop_flip_active(stack, db):
    job = await stack.ok("create", recording_payload(0, active=False))
    started = await stack.ok("start", {"id": job["id"]})
    assert started["active"] is True
    stopped = await stack.ok("stop", {"id": job["id"]})
    assert stopped["active"] is False
    assert (await db[Collections.RECORDINGS].find_one({}))["generation"] == 1


async def test_remove_returns_the_job_and_deletes_job_input_and_files(stack, db):
    job = await stack.ok("create", recording_payload(0, active=False))
    removed = await stack.ok("remove", {"id": job["id"]}, verb="DELETE")
    assert removed == job
    r = await stack.call("getById", {"id": job["id"]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"
    assert await db[Collections.RECORDINGS].count_documents({}) == 0
    assert await db[Collections.INPUTS].count_documents({}) == 0


async def test_unknown_ids_are_404(stack):
    missing = "66004d2997300f9385d32b00"
    for method, body in [
        ("getById", {"id": missing}),
        ("start", {"id": missing}),
        ("stop", {"id": missing}),
        ("removeFile", {"record_id": missing, "file_id": missing}),
    ]:
        r = await stack.call(method, body)
        assert r.status_code == 404, method
        assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_get_stat_is_an_empty_list_without_running_jobs(stack):
    assert await stack.ok("getStat", {}) == []


def _bad(**changes):
    body = recording_payload(0, active=True)
    for path, value in changes.items():
        target = body
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        if value is _DROP:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return body


_DROP = object()

BAD_CREATES = [
    ("missing name", _bad(recording_name=_DROP), "recording_name"),
    ("blank name", _bad(recording_name="   "), "recording_name"),
    ("wrong recording_type", _bad(recording_type="RECORDING_X"), "recording_type"),
    ("wrong output_format", _bad(output_format="wmv"), "output_format"),
    ("wrong recording_mode", _bad(recording_mode="FOREVER"), "recording_mode"),
    (
        "split without duration",
        _bad(recording_mode="RECORDING_MODE_SPLIT_BY_TIME"),
        "recording_mode_settings",
    ),
    ("negative delete_after", _bad(delete_after=-1), "delete_after"),
    ("fractional delete_after", _bad(delete_after=1.5), "delete_after"),
    ("wrong input type", _bad(input__input_type="INPUT_TYPE_FILE"), "input.input_type"),
    ("file url", _bad(input__input_stream_url="file:///etc/passwd"), "input.input_stream_url"),
    (
        "concat url",
        _bad(input__input_stream_url="concat:/etc/passwd|/etc/shadow"),
        "input.input_stream_url",
    ),
    (
        "subfile url",
        _bad(input__input_stream_url="subfile,,start,0,end,0,,:/etc/passwd"),
        "input.input_stream_url",
    ),
    (
        "scheme not matching type",
        _bad(input__input_stream_url="rtmp://127.0.0.1/live/x"),
        "input.input_stream_url",
    ),
    (
        "udp url for hls type",
        _bad(input__input_type="INPUT_TYPE_HLS_URL", input__input_stream_url="udp://1.2.3.4:5"),
        "input.input_stream_url",
    ),
    ("missing input", _bad(input=_DROP), "input"),
    (
        "unknown video codec",
        _bad(transcoding__video_transcoding="h266"),
        "transcoding.video_transcoding",
    ),
    ("unknown preset", _bad(transcoding__preset="warp"), "transcoding.preset"),
    ("unknown modify_audio type", _bad(modify_audio__type="LOUDER"), "modify_audio.type"),
]


@pytest.mark.parametrize(
    ("payload", "field"), [(p, f) for _, p, f in BAD_CREATES], ids=[n for n, _, _ in BAD_CREATES]
)
async def test_bad_create_is_400_naming_the_field_and_stores_nothing(stack, db, payload, field):
    r = await stack.call("create", payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert r.json()["success"] is False
    assert error["code"] == "VALIDATION_ERROR"
    assert error["field"] == field, error
    assert await db[Collections.RECORDINGS].count_documents({}) == 0
    assert await db[Collections.INPUTS].count_documents({}) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filter": {"$where": "sleep(1000)"}}, "filter"),
        ({"filter": {"recording_name": {"$ne": ""}}}, "filter.recording_name"),
        ({"filter": {"runtime.node": "x"}}, "filter"),
        ({"sort": {"$natural": 1}}, "sort"),
        ({"limit": -1}, "limit"),
    ],
)
async def test_bad_list_queries_are_refused(stack, body, field):
    for method in ("getAll", "getCount"):
        r = await stack.call(method, body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert error["field"].startswith(field), error


async def test_bad_inputs_start_no_process_on_a_running_recorder(stack, db):
    recorder = await stack.start_recorder()
    await eventually(
        lambda: db[Collections.NODES].count_documents({"service": "recorder"}),
        timeout=20,
        what="the recorder's node row",
    )
    for _, payload, _field in BAD_CREATES:
        assert (await stack.call("create", payload)).status_code == 400
    bad_update = _bad(input__input_stream_url="file:///etc/passwd")
    bad_update["id"] = "66004d2997300f9385d32b00"
    assert (await stack.call("update", bad_update)).status_code == 400
    node = await db[Collections.NODES].find_one({"service": "recorder"})
    assert node["running_jobs"] == 0
    assert await db[Collections.RECORDINGS].count_documents({}) == 0
    assert await db[Collections.FILES].count_documents({}) == 0
    assert ffmpeg_children(recorder.pid) == []
