"""The Restreams API without media: shapes as the seed shows, storage the restreamer relies on,
hints and stats over real NATS, the HLS monitoring route, validation."""

from __future__ import annotations

import re
from typing import Any

import nats
import pytest
from bson import ObjectId
from support.livekv import node_beat
from support.media import ffmpeg_children
from support.seeds import DROP, changed, restream_payload, seed_payloads
from support.stack import TOKEN, running_stack
from support.wait import eventually

from reelhouse.common.contracts.messages import DestinationState, JobCommand, JobStats, ProcessData
from reelhouse.common.files import restream_hls_dir
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Subjects

ID = re.compile(r"^[0-9a-f]{24}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MISSING = "66004d2997300f9385d32b00"
SEED = "restreams-api.txt"

SRT_OUT = restream_payload(1)["output"]
RTMP_OUT = restream_payload(0)["output"]


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


@pytest.fixture
async def nc(service_env):
    """A plain NATS client on this test's server (what a restreamer or an operator would use)."""
    client = await nats.connect(service_env["REELHOUSE_NATS_URL"])
    yield client
    await client.close()


@pytest.fixture
def subjects(service_env) -> Subjects:
    return Subjects(service_env["REELHOUSE_SUBJECT_PREFIX"])


async def create(stack, index: int = 0, **changes: Any) -> dict[str, Any]:
    return await stack.api_ok("restream/create", restream_payload(index, active=False, **changes))


def outputs_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out = payload["output"]
    return out if isinstance(out, list) else [out]


def assert_job_shape(job: dict[str, Any], payload: dict[str, Any]) -> None:
    assert ID.match(job["_id"])
    assert job["id"] == job["_id"]
    assert job["success"] is True
    assert job["module_name"] == "MODULE_RESTREAM"
    assert STAMP.match(job["created"])
    assert STAMP.match(job["modified"])
    for key in ("restream_name", "modify_audio", "modify_video", "active"):
        assert job[key] == payload[key], key
    assert job["overlay"]["type"] == payload["overlay"]["type"]
    assert job["overlay"]["position"] == payload["overlay"]["position"]
    for key in ("video_transcoding", "audio_transcoding", "output_video_bitrate",
                "output_audio_bitrate", "sample_rate"):  # fmt: skip
        assert job["transcoding"][key] == payload["transcoding"][key], key
    assert isinstance(job["input"], list)
    assert len(job["input"]) == 1
    inp = job["input"][0]
    assert ID.match(inp["_id"])
    assert inp["id"] == inp["_id"]
    for key, value in payload["input"].items():
        assert inp[key] == value, key
    assert isinstance(job["output"], list)
    expected = outputs_of(payload)
    assert len(job["output"]) == len(expected)
    for out, sent in zip(job["output"], expected, strict=True):
        assert ID.match(out["_id"])
        assert out["id"] == out["_id"]
        for key, value in sent.items():
            assert out[key] == value, key
    ids = [job["_id"], inp["_id"], *(o["_id"] for o in job["output"])]
    assert len(set(ids)) == len(ids)
    for hidden in ("tenant", "entity_id", "generation"):
        assert hidden not in job
        assert hidden not in inp
        assert all(hidden not in o for o in job["output"])


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_seed_presets_create_jobs_shaped_like_the_seed_and_stored_for_the_worker(
    stack, db, index
):
    payload = restream_payload(index, active=False)
    job = await stack.api_ok("restream/create", payload)
    assert_job_shape(job, payload)
    assert job["runtime"] is None
    stored = await db[Collections.RESTREAMS].find_one({})
    assert str(stored["_id"]) == job["_id"]
    assert stored["tenant"] == "default"
    assert stored["generation"] == 0
    assert stored["active"] is False
    assert stored["module_name"] == "MODULE_RESTREAM"
    assert stored["restream_name"] == payload["restream_name"]
    assert stored["overlay"] == job["overlay"]
    assert stored["transcoding"] == job["transcoding"]
    assert "runtime" not in stored
    assert stored["input"] == [ObjectId(job["input"][0]["_id"])]
    assert stored["output"] == [ObjectId(job["output"][0]["_id"])]
    inp = await db[Collections.INPUTS].find_one({})
    out = await db[Collections.OUTPUTS].find_one({})
    for doc in (inp, out):
        assert doc["tenant"] == "default"
        assert doc["entity_id"] == job["_id"]
        assert doc["created"] == doc["modified"]
    assert inp["input_stream_url"] == payload["input"]["input_stream_url"]
    assert out["output_type"] == payload["output"]["output_type"]
    assert out["output_stream_url"] == payload["output"].get("output_stream_url", "")
    assert await db[Collections.INPUTS].count_documents({}) == 1
    assert await db[Collections.OUTPUTS].count_documents({}) == 1


async def test_get_by_id_get_all_get_count_filters_sort_skip_limit(stack):
    a = await create(stack, 0)
    b = await create(stack, 1)
    c = await create(stack, 2)
    assert await stack.api_ok("restream/getById", {"id": b["id"]}) == b
    assert await stack.api_ok("restream/getCount", {}) == {"count": 3}
    assert await stack.api_ok("restream/getCount") == {"count": 3}
    seed_list = seed_payloads(SEED, "/api/restream/getAll")[0]
    listed = await stack.api_ok("restream/getAll", seed_list)
    assert listed == [a, b, c]  # a bare array, sorted {created: 1}, populated
    assert [j["id"] for j in await stack.api_ok("restream/getAll")] == [a["id"], b["id"], c["id"]]
    newest = await stack.api_ok("restream/getAll", {"sort": {"created": -1}, "limit": 2})
    assert [j["id"] for j in newest] == [c["id"], b["id"]]
    assert [j["id"] for j in await stack.api_ok("restream/getAll", {"skip": 2})] == [c["id"]]
    by_name = {"filter": {"restream_name": "HLS playback probe"}}
    assert await stack.api_ok("restream/getAll", by_name) == [c]
    assert await stack.api_ok("restream/getCount", by_name) == {"count": 1}
    assert await stack.api_ok("restream/getAll", {"filter": {"id": a["id"]}}) == [a]
    assert await stack.api_ok("restream/getAll", {"filter": {"_id": "nonsense"}}) == []
    await stack.api_ok("restream/start", {"id": b["id"]})
    active = await stack.api_ok("restream/getAll", {"filter": {"active": True}})
    assert [j["id"] for j in active] == [b["id"]]
    assert await stack.api_ok("restream/getCount", {"filter": {"active": False}}) == {"count": 2}
    by_name_desc = await stack.api_ok("restream/getAll", {"sort": {"restream_name": -1}})
    assert [j["restream_name"] for j in by_name_desc] == sorted(
        (j["restream_name"] for j in listed), reverse=True
    )


async def test_update_keeps_id_replaces_input_and_outputs_and_bumps_generation(stack, db):
    job = await create(stack, 0)
    body = seed_payloads(SEED, "/api/restream/update")[0]
    body["id"] = job["id"]
    body["input"]["input_stream_url"] = "srt://127.0.0.1:2000"
    body["output"]["output_stream_url"] = "rtmps://live.example.com/app/other-key"
    updated = await stack.api_ok("restream/update", body)
    assert updated["id"] == job["id"]
    assert updated["restream_name"] == "SRT to RTMP social output updated"
    assert updated["active"] is False
    assert updated["input"][0]["input_stream_url"] == "srt://127.0.0.1:2000"
    assert [o["output_stream_url"] for o in updated["output"]] == [
        "rtmps://live.example.com/app/other-key"
    ]
    assert updated["created"] == job["created"]
    assert updated["modified"] >= job["modified"]
    assert (await db[Collections.RESTREAMS].find_one({}))["generation"] == 1
    assert await db[Collections.INPUTS].count_documents({}) == 1
    assert await db[Collections.OUTPUTS].count_documents({}) == 1

    # Two destinations, then back to one: the id list follows the order; nothing is left over.
    body["output"] = [SRT_OUT, RTMP_OUT]
    two = await stack.api_ok("restream/update", body)
    assert [o["output_type"] for o in two["output"]] == [
        "OUTPUT_TYPE_SRT_URL",
        "OUTPUT_TYPE_OTHER_RTMP_URL",
    ]
    stored = await db[Collections.RESTREAMS].find_one({})
    assert stored["output"] == [ObjectId(o["_id"]) for o in two["output"]]
    assert stored["generation"] == 2
    assert await db[Collections.OUTPUTS].count_documents({"entity_id": job["id"]}) == 2
    body["output"] = RTMP_OUT
    one = await stack.api_ok("restream/update", body)
    assert [o["output_type"] for o in one["output"]] == ["OUTPUT_TYPE_OTHER_RTMP_URL"]
    stored = await db[Collections.RESTREAMS].find_one({})
    assert stored["output"] == [ObjectId(one["output"][0]["_id"])]
    assert stored["generation"] == 3
    assert await db[Collections.OUTPUTS].count_documents({}) == 1
    assert await stack.api_ok("restream/getById", {"id": job["id"]}) == one


async def test_start_stop_flip_active_bump_generation_and_hint_the_restreamers(
    stack, db, nc, subjects
):
    received: list[JobCommand] = []

    async def on_msg(msg: Any) -> None:
        received.append(JobCommand.model_validate_json(msg.data))

    await nc.subscribe(subjects.commands("restreamer"), cb=on_msg)
    await nc.flush()
    job = await create(stack, 0)
    started = await stack.api_ok("restream/start", {"id": job["id"]})
    assert started["active"] is True
    assert (await db[Collections.RESTREAMS].find_one({}))["generation"] == 1
    await eventually(lambda: received, timeout=5, what="the start hint")
    assert [(c.module, c.verb, c.job_id) for c in received] == [("restream", "start", job["id"])]
    stopped = await stack.api_ok("restream/stop", {"id": job["id"]})
    assert stopped["active"] is False
    assert (await db[Collections.RESTREAMS].find_one({}))["generation"] == 1
    await eventually(lambda: len(received) == 2, timeout=5, what="the stop hint")
    assert (received[1].module, received[1].verb, received[1].job_id) == (
        "restream",
        "stop",
        job["id"],
    )
    body = {**restream_payload(0, active=True), "id": job["id"]}
    await stack.api_ok("restream/update", body)
    await eventually(lambda: len(received) == 3, timeout=5, what="the reload hint")
    assert received[2].verb == "reload"
    created = await stack.api_ok("restream/create", restream_payload(1, active=True))
    await eventually(lambda: len(received) == 4, timeout=5, what="the create's start hint")
    assert (received[3].verb, received[3].job_id) == ("start", created["id"])


async def test_multi_destination_create_keeps_the_order(stack, db):
    hls = {"output_type": "OUTPUT_TYPE_HLS"}
    payload = restream_payload(0, active=False, output=[SRT_OUT, hls, RTMP_OUT])
    job = await stack.api_ok("restream/create", payload)
    assert_job_shape(job, payload)
    assert [o["output_type"] for o in job["output"]] == [
        "OUTPUT_TYPE_SRT_URL",
        "OUTPUT_TYPE_HLS",
        "OUTPUT_TYPE_OTHER_RTMP_URL",
    ]
    stored = await db[Collections.RESTREAMS].find_one({})
    assert stored["output"] == [ObjectId(o["_id"]) for o in job["output"]]
    docs = {d["_id"]: d async for d in db[Collections.OUTPUTS].find({})}
    assert [docs[i]["output_type"] for i in stored["output"]] == [
        o["output_type"] for o in job["output"]
    ]
    assert docs[stored["output"][1]]["output_stream_url"] == ""


async def test_remove_deletes_job_input_outputs_and_hls_folder(stack, db):
    job = await create(stack, 0, output=[SRT_OUT, RTMP_OUT])
    keep = await create(stack, 1)
    hls = restream_hls_dir(stack.storage_root, job["id"])
    hls.mkdir(parents=True)
    (hls / "index.m3u8").write_text("#EXTM3U\n")
    removed = await stack.api_ok("restream/remove", {"id": job["id"]}, verb="DELETE")
    assert removed == job
    r = await stack.api("restream/getById", {"id": job["id"]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"
    assert not hls.parent.exists()
    assert await db[Collections.RESTREAMS].count_documents({}) == 1
    assert await db[Collections.INPUTS].count_documents({"entity_id": job["id"]}) == 0
    assert await db[Collections.OUTPUTS].count_documents({"entity_id": job["id"]}) == 0
    assert await db[Collections.OUTPUTS].count_documents({"entity_id": keep["id"]}) == 1
    assert await stack.api_ok("restream/getById", {"id": keep["id"]}) == keep


async def test_unknown_ids_are_404(stack):
    body = {**restream_payload(0), "id": MISSING}
    for method, payload, verb in [
        ("getById", {"id": MISSING}, "POST"),
        ("start", {"id": MISSING}, "POST"),
        ("stop", {"id": MISSING}, "POST"),
        ("update", body, "POST"),
        ("remove", {"id": MISSING}, "DELETE"),
    ]:
        r = await stack.api(f"restream/{method}", payload, verb=verb)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["error"]["code"] == "NOT_FOUND"
        assert r.json()["error"]["field"] == "id"
    r = await stack.api("restream/getById", {"id": "nope"})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "id"


async def test_get_stat_serves_what_the_restreamers_publish(stack, nc, subjects):
    assert await stack.api_ok("restream/getStat", {}) == []
    a = await create(stack, 0, output=[RTMP_OUT, SRT_OUT])
    b = await create(stack, 1)
    destinations = [
        DestinationState(
            index=0,
            output_type="OUTPUT_TYPE_OTHER_RTMP_URL",
            target="rtmp://a.rtmp.youtube.com/live2/****",
            state="sending",
        ),
        DestinationState(
            index=1,
            output_type="OUTPUT_TYPE_SRT_URL",
            target="srt://127.0.0.1:2035",
            state="retrying",
            failure="connection_refused",
            message="Connection refused",
            retries=2,
        ),
    ]

    def stats(job_id: str, tenant: str = "default", **extra: Any) -> JobStats:
        data = ProcessData(id=job_id, bitrate_kbits=1842, fps="30.0", frame="300")
        return JobStats(module="restream", job_id=job_id, tenant=tenant, node="restreamer-x",
                        state="running", processData=data, **extra)  # fmt: skip

    with_dest = stats(a["id"], destinations=destinations)
    without = stats(b["id"])
    other_tenant = stats(str(ObjectId()), tenant="elsewhere")  # never shown to "default"
    recording = stats(str(ObjectId())).model_copy(update={"module": "recording"})

    async def published_and_served() -> list[dict[str, Any]] | None:
        for message in (with_dest, without, other_tenant, recording):
            subject = subjects.live_key_subject(
                subjects.live_progress(message.module, message.job_id)
            )
            await nc.publish(subject, message.model_dump_json().encode())
        await nc.flush()
        rows = await stack.api_ok("restream/getStat", {})
        return rows if len(rows) == 2 else None

    rows = await eventually(published_and_served, timeout=10, what="getStat rows", interval=0.2)
    by_id = {row["processData"]["id"]: row for row in rows}
    assert set(by_id) == {a["id"], b["id"]}
    row = by_id[a["id"]]
    assert row["processData"] == with_dest.processData.model_dump(mode="json")
    assert row["processData"]["bitrate_kbits"] == 1842
    assert row["destinations"] == [d.model_dump(mode="json") for d in destinations]
    assert row["destinations"][1]["state"] == "retrying"
    assert STAMP.match(row["destinations"][0]["since"])
    assert "destinations" not in by_id[b["id"]]
    assert await stack.api_ok("recording/getStat", {}) != []  # the recording one is theirs
    await stack.api_ok("restream/stop", {"id": a["id"]})
    assert [r["processData"]["id"] for r in await stack.api_ok("restream/getStat")] == [b["id"]]


PLAYLIST = '#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:2.0,\nseg0.ts\n'


async def test_hls_route_serves_the_jobs_hls_files_with_a_query_token(stack):
    job = await create(stack, 0, output=[RTMP_OUT, {"output_type": "OUTPUT_TYPE_HLS"}])
    hls = restream_hls_dir(stack.storage_root, job["id"])
    hls.mkdir(parents=True)
    (hls / "index.m3u8").write_text(PLAYLIST)
    (hls / "seg0.ts").write_bytes(b"\x47" * 188 * 4)
    (hls.parent / "secret.ts").write_bytes(b"not for players")
    base = f"/api/restream/hls/{job['id']}"
    client = stack.client

    r = await client.get(f"{base}/index.m3u8", params={"token": TOKEN})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    # A player drops the playlist's query when it resolves segment names: the token is carried.
    assert f"seg0.ts?token={TOKEN}" in r.text.splitlines()
    assert f'URI="init.mp4?token={TOKEN}"' in r.text
    r = await client.get(f"{base}/seg0.ts", params={"token": TOKEN})
    assert r.status_code == 200
    assert r.headers["content-type"] == "video/mp2t"
    assert r.content == b"\x47" * 188 * 4
    r = await client.get(f"{base}/index.m3u8", headers={"x-access-token": TOKEN})
    assert r.status_code == 200
    assert r.text == PLAYLIST

    for params, headers in [({}, {}), ({"token": "wrong-token-0123456789"}, {})]:
        r = await client.get(f"{base}/index.m3u8", params=params, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
    for name in ("%2E%2E", "..%2Esecret.ts", ".hidden.ts", "seg%200.ts", "seg0.ts%00"):
        r = await client.get(f"{base}/{name}", params={"token": TOKEN})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"
        assert r.json()["error"]["field"] == "name"
    r = await client.get(f"{base}/%2E%2E%2Fsecret.ts", params={"token": TOKEN})
    assert r.status_code == 404  # a "/" never reaches the route
    for name in ("seg9.ts", "notes.txt"):
        r = await client.get(f"{base}/{name}", params={"token": TOKEN})
        assert r.status_code == 404, name
        assert r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.get(f"/api/restream/hls/{MISSING}/index.m3u8", params={"token": TOKEN})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.post("/api/restream/getById", json={"id": job["id"]}, params={"token": TOKEN})
    assert r.status_code == 401  # the query token is for the media route only


def _bad(index: int = 0, **changes: Any) -> dict[str, Any]:
    return changed(restream_payload(index, active=True), **changes)


BAD_REQUESTS = [
    ("wrong output type", "create", _bad(output__output_type="OUTPUT_TYPE_FILE"),
     "output.0.output_type"),
    ("srt url on rtmp output", "create", _bad(output__output_stream_url="srt://1.2.3.4:5"),
     "output.0.output_stream_url"),
    ("file output", "create", _bad(output__output_stream_url="file:///tmp/x.flv"),
     "output.0.output_stream_url"),
    ("rtmp output without url", "create", _bad(output__output_stream_url=DROP),
     "output.0.output_stream_url"),
    ("concat input", "create", _bad(input__input_stream_url="concat:/etc/passwd|/etc/shadow"),
     "input.input_stream_url"),
    ("file input", "create", _bad(input__input_stream_url="file:///etc/passwd"),
     "input.input_stream_url"),
    ("missing name", "create", _bad(restream_name=DROP), "restream_name"),
    ("blank name", "create", _bad(restream_name="   "), "restream_name"),
    ("missing output", "create", _bad(output=DROP), "output"),
    ("no outputs", "create", _bad(output=[]), "output"),
    ("url on dev_null", "create", _bad(2, output__output_stream_url="udp://10.0.0.1:5000"),
     "output.0.output_stream_url"),
    ("stream key on srt", "create", _bad(1, output__output_stream_key="secret"),
     "output.0.output_stream_key"),
    ("nine outputs", "create", _bad(output=[SRT_OUT] * 9), "output"),
    ("bad second output", "create",
     _bad(output=[SRT_OUT, {**RTMP_OUT, "output_stream_url": "udp://1.2.3.4:5"}]),
     "output.1.output_stream_url"),
    ("libx265 to rtmp", "create", _bad(transcoding__video_transcoding="libx265"),
     "transcoding.video_transcoding"),
    ("unknown field", "create", _bad(output__colour="red"), "output.0.colour"),
    ("bad update", "update", {**_bad(input__input_stream_url="concat:/a|/b"), "id": MISSING},
     "input.input_stream_url"),
    ("$where in getAll", "getAll", {"filter": {"$where": "sleep(1000)"}}, "filter"),
    ("operator in getCount", "getCount", {"filter": {"restream_name": {"$ne": ""}}},
     "filter.restream_name"),
    ("recording field in filter", "getAll", {"filter": {"recording_name": "x"}}, "filter"),
    ("unknown sort", "getAll", {"sort": {"$natural": 1}}, "sort"),
    ("negative limit", "getAll", {"limit": -1}, "limit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "payload", "field"),
    [(m, p, f) for _, m, p, f in BAD_REQUESTS],
    ids=[n for n, *_ in BAD_REQUESTS],
)
async def test_bad_request_is_400_naming_the_field_and_stores_nothing(
    stack, db, method, payload, field
):
    r = await stack.api(f"restream/{method}", payload)
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["field"] == field, error
    for collection in (Collections.RESTREAMS, Collections.INPUTS, Collections.OUTPUTS):
        assert await db[collection].count_documents({}) == 0, collection


async def test_bad_requests_start_nothing_on_a_running_restreamer(stack, db):
    restreamer = await stack.start_restreamer()
    await eventually(
        lambda: db[Collections.NODES].count_documents({"service": "restreamer"}),
        timeout=20,
        what="the restreamer's node row",
    )
    for _, method, payload, _field in BAD_REQUESTS:
        assert (await stack.api(f"restream/{method}", payload)).status_code == 400
    # Give a (wrongly) hinted restreamer one reconcile pass to act, then look.
    env = stack.env
    url, prefix = env["REELHOUSE_NATS_URL"], env["REELHOUSE_SUBJECT_PREFIX"]
    first = await eventually(lambda: node_beat(url, prefix, "restreamer", "restreamer-1"),
                             timeout=20, what="the restreamer's heartbeat")  # fmt: skip

    async def beat_again() -> dict | None:
        again = await node_beat(url, prefix, "restreamer", "restreamer-1")
        return again if again and again["at"] >= first["at"] + 1.0 else None

    node = await eventually(beat_again, timeout=20, what="another restreamer heartbeat")
    assert node["running_jobs"] == 0
    assert ffmpeg_children(restreamer.pid) == []
    assert await db[Collections.RESTREAMS].count_documents({}) == 0
