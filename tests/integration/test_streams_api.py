"""``/api/streams/*`` CRUD against the real API app, NATS and FerretDB, with the seed's presets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from support.seeds import seed_payloads
from support.stack import HEADERS, Stack, running_stack

from reelhouse.common.contracts.streams import DEFAULT_AUDIO_SETTINGS

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def presets() -> list[dict[str, Any]]:
    """The seed's four create presets (the document repeats the first as its generic example)."""
    found: dict[str, dict[str, Any]] = {}
    for body in seed_payloads("streams-api.txt", "/api/streams/create"):
        found.setdefault(body["name"], body)
    bodies = list(found.values())
    assert [b["name"] for b in bodies] == [
        "Main stage publisher",
        "Remote return receiver",
        "RTMP primary publish",
        "Commentary audio stream",
    ]
    return bodies


async def call(stack: Stack, method: str, body: Any = None, *, verb: str = "POST", **kw: Any):
    return await stack.client.request(
        verb, f"/api/streams/{method}", json=body, headers=HEADERS, **kw
    )


async def ok(stack: Stack, method: str, body: Any = None, *, verb: str = "POST") -> Any:
    r = await call(stack, method, body, verb=verb)
    assert r.status_code == 200, (method, r.status_code, r.text)
    return r.json()


@pytest.fixture
async def stack(service_env: dict[str, str], tmp_path: Path, db: AsyncDatabase):
    async with running_stack(service_env, tmp_path) as stack:
        yield stack


async def test_the_four_seed_presets_are_created_as_the_seed_shows(stack: Stack, db):
    for preset in presets():
        row = await ok(stack, "create", preset)
        assert row["_id"] == row["id"]
        assert ObjectId.is_valid(row["id"])
        for key in ("name", "role_name", "stream_id", "entity_id", "module_name", "active"):
            assert row[key] == preset[key], key
        assert row["host"] == preset.get("host", "")
        assert row["entityModel"] == (
            "ServerModel" if preset["module_name"] == "MODULE_SRT_SERVERS" else "RtmpServerModel"
        )
        assert row["stream_meta_data"] == {}
        # audio_settings round-trips unchanged; without one, the seed's default stereo track.
        assert row["audio_settings"] == preset.get("audio_settings", DEFAULT_AUDIO_SETTINGS)
        assert TIMESTAMP.match(row["created"])
        assert TIMESTAMP.match(row["modified"])
        assert row["success"] is True
        assert await ok(stack, "getById", {"id": row["id"]}) == row
        stored = await db.streams.find_one({"_id": ObjectId(row["id"])})
        assert stored["tenant"] == "default"
        if "audio_settings" in preset:
            assert stored["audio_settings"] == preset["audio_settings"]
    assert (await ok(stack, "getCount", {}))["count"] == 4


async def test_get_all_sorts_pages_and_filters_by_role_module_and_search(stack: Stack):
    created = [await ok(stack, "create", preset) for preset in presets()]
    seed_list = seed_payloads("streams-api.txt", "/api/streams/getAll")[0]
    rows = await ok(stack, "getAll", seed_list)
    assert isinstance(rows, list)
    assert [r["id"] for r in rows] == [r["id"] for r in created]  # default sort {created: 1}
    assert [r["id"] for r in await ok(stack, "getAll")] == [r["id"] for r in created]

    by_name = await ok(stack, "getAll", {"sort": {"name": -1}})
    assert [r["name"] for r in by_name] == sorted((r["name"] for r in created), reverse=True)
    page = await ok(stack, "getAll", {"sort": {"created": 1}, "limit": 2, "skip": 1})
    assert [r["id"] for r in page] == [r["id"] for r in created[1:3]]

    async def names(flt: dict[str, Any]) -> list[str]:
        rows = await ok(stack, "getAll", {"filter": flt})
        count = (await ok(stack, "getCount", {"filter": flt}))["count"]
        assert count == len(rows)
        return [r["name"] for r in rows]

    assert await names({"role_name": "receiver"}) == ["Remote return receiver"]
    assert await names({"module_name": "MODULE_RTMP_SERVERS"}) == ["RTMP primary publish"]
    assert await names({"search": "commentary"}) == ["Commentary audio stream"]
    assert await names({"search": "MAIN-STAGE"}) == [
        "Main stage publisher",
        "Remote return receiver",
    ]
    assert await names({"search": "a.b(c"}) == []  # text, not a pattern
    assert await names({"role_name": "publisher", "module_name": "MODULE_SRT_SERVERS"}) == [
        "Main stage publisher",
        "Commentary audio stream",
    ]
    assert await names({"id": created[2]["id"]}) == ["RTMP primary publish"]

    for bad in ({"filter": {"$where": "1"}}, {"filter": {"tenant": "other"}}):
        r = await call(stack, "getAll", bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == "filter"
    r = await call(stack, "getAll", {"sort": {"runtime": 1}})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "sort"


async def test_update_changes_what_is_sent_and_keeps_the_rest(stack: Stack, db):
    row = await ok(stack, "create", presets()[1])  # the receiver with a host binding
    seed_update = seed_payloads("streams-api.txt", "/api/streams/update")[0]
    seed_update["id"] = row["id"]
    updated = await ok(stack, "update", seed_update)
    assert updated["name"] == "Main stage publisher"
    assert updated["role_name"] == "publisher"
    assert updated["audio_settings"] == seed_update["audio_settings"]
    assert updated["host"] == "198.51.100.24"  # not sent: kept
    assert updated["created"] == row["created"]
    assert updated["modified"] >= row["modified"]
    stored = await db.streams.find_one({"_id": ObjectId(row["id"])})
    assert stored["generation"] == 1

    # A row moves to another module with a server of that module (the RTMP seed's).
    bad = await call(stack, "update", {"id": row["id"], "module_name": "MODULE_RTMP_SERVERS"})
    assert bad.json()["error"]["field"] == "entity_id"
    moved = await ok(stack, "update", {"id": row["id"], "module_name": "MODULE_RTMP_SERVERS",
                                       "entity_id": "680500000000000000000001"})  # fmt: skip
    assert moved["entityModel"] == "RtmpServerModel"

    r = await call(stack, "update", {"id": row["id"], "role_name": "boss"})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "role_name"
    assert (await ok(stack, "getById", {"id": row["id"]}))["role_name"] == "publisher"
    r = await call(stack, "update", {"id": str(ObjectId()), "name": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"role_name": "boss"}, "role_name"),
        ({"module_name": "MODULE_HLS"}, "module_name"),
        ({"entity_id": "not-an-id"}, "entity_id"),
        ({"stream_id": "  "}, "stream_id"),
        ({"host": "a host"}, "host"),
        ({"stream_url": "file:///etc/passwd"}, "stream_url"),
        ({"stream_url": "concat:a.ts|b.ts"}, "stream_url"),
        ({"stream_meta_data": {"$set": 1}}, "stream_meta_data"),
        ({"active": "yes"}, "active"),
        ({"unknown": 1}, "unknown"),
        (
            {"audio_settings": {"streams": [{"id": 0, "name": "T", "channel_layout": "stereo",
                                             "channels": [{"id": "FL", "name": "L"}]}]}},
            "audio_settings.streams.0.channels",
        ),
        (
            {"audio_settings": {"streams": [{"id": 0, "name": "T", "channel_layout": "mono",
                                             "channels": [{"id": "FC", "name": "C"}],
                                             "gain": 3}]}},
            "audio_settings.streams.0.gain",
        ),
    ],
)  # fmt: skip
async def test_bad_input_is_400_naming_the_field_and_nothing_is_stored(
    stack: Stack, db, change: dict[str, Any], field: str
):
    body = {**presets()[3], **change}
    r = await call(stack, "create", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["field"] == field, error
    assert await db.streams.count_documents({}) == 0


async def test_set_stream_info_stores_the_flow_identified_by_stream_id_role_and_port(
    stack: Stack,
):
    row = await ok(stack, "create", presets()[0])
    body = seed_payloads("streams-api.txt", "/api/streams/setStreamInfo")[0]
    assert await ok(stack, "setStreamInfo", body) == {"success": True}
    stored = await ok(stack, "getById", {"id": row["id"]})
    info = stored["stream_info"]
    assert (info["short_stream_id"], info["port"], info["receiver_port"]) == (
        "srt-main",
        1935,
        1936,
    )
    assert TIMESTAMP.match(info["updated"])

    meta = {"codec_name": "h264", "fps": "30/1"}
    await ok(stack, "setStreamInfo", {**body, "port": "1935", "stream_meta_data": meta})
    assert (await ok(stack, "getById", {"id": row["id"]}))["stream_meta_data"] == meta

    # Another port is another flow; another role is another row: neither exists.
    for other in ({**body, "port": 2000}, {**body, "role": "receiver"}):
        r = await call(stack, "setStreamInfo", other)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["field"] == "stream_id"
    r = await call(stack, "setStreamInfo", {**body, "port": 70000})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "port"


async def test_start_stop_and_remove(stack: Stack, db):
    row = await ok(stack, "create", {**presets()[2], "active": False})
    started = await ok(stack, "start", {"id": row["id"]})
    assert started["active"] is True
    assert started["status"] is None
    assert (await db.streams.find_one({"_id": ObjectId(row["id"])}))["generation"] == 1
    stopped = await ok(stack, "stop", {"id": row["id"]})
    assert stopped["active"] is False
    assert stopped["name"] == row["name"]
    assert stopped["audio_settings"] == row["audio_settings"]

    assert await ok(stack, "remove", {"id": row["id"]}, verb="DELETE") == {"success": True}
    r = await call(stack, "getById", {"id": row["id"]})
    assert r.status_code == 404
    r = await call(stack, "remove", {"id": row["id"]}, verb="DELETE")
    assert r.status_code == 404

    other = await ok(stack, "create", presets()[0])
    r = await stack.client.delete(
        "/api/streams/remove", params={"id": other["id"]}, headers=HEADERS
    )
    assert r.status_code == 200
    assert r.json() == {"success": True}
    assert await db.streams.count_documents({}) == 0
    r = await call(stack, "remove", None, verb="DELETE")
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "id"


async def test_get_stream_info_without_a_prober_is_a_clean_503(stack: Stack):
    body = seed_payloads("streams-api.txt", "/api/streams/getStreamInfo")[0]
    r = await call(stack, "getStreamInfo", body)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "UNAVAILABLE"
    assert int(r.headers["Retry-After"]) > 0
    r = await call(stack, "getStreamInfo", {"stream_url": "file:///etc/passwd"})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "stream_url"
