"""Operator endpoints (issue 7): getLogs, settings get/update, getDependencies, nodes/getAll.

A real recorder subprocess ships its warnings into ``logs`` and applies runtime settings live;
the API runs in-process against the session's real NATS and FerretDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
from support.auth import make_key, stored_user
from support.seeds import recording_payload
from support.services import ServiceProcess, api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.accounts.principal import issue_access_token
from reelhouse.api.settings import ApiSettings
from reelhouse.api.system.routes.system import parse_codecs, parse_protocols, trim_logs
from reelhouse.common.logging import LOGS_COLLECTION
from reelhouse.common.subjects import Subjects


@contextlib.asynccontextmanager
async def api(settings_env: dict[str, str], **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN, **overrides)
    async with api_client(settings) as client:
        yield client


async def call(
    client: httpx.AsyncClient, path: str, body: Any = None, status: int = 200, **kw: Any
) -> Any:
    r = await client.post(f"/api/{path}", json=body, headers=kw.get("headers", HEADERS))
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


async def eventually(check: Any, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_fleet_live_settings_and_shipped_logs_of_a_real_recorder(
    settings_env: dict[str, str], service_env: dict[str, str], db: Any, tmp_path: Path
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    recorder = ServiceProcess(
        "recorder", {**service_env, "REELHOUSE_NODE_ID": "recorder-sys"}, tmp_path / "rec.log"
    )
    nc = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    reloaded: list[dict[str, Any]] = []

    async def on_reload(msg: Any) -> None:
        reloaded.append(json.loads(msg.data))

    await nc.subscribe(Subjects(prefix).system_event("config_reloaded"), cb=on_reload)
    await recorder.start()
    try:
        async with api(settings_env) as client:
            # -- the fleet: every field of a node --------------------------------------------
            async def recorder_row() -> dict[str, Any] | None:
                rows = await call(client, "nodes/getAll", {"service": "recorder"})
                return rows[0] if rows and rows[0]["alive"] else None

            row = await eventually(recorder_row, what="the recorder's node row")
            assert row["node_id"] == "recorder-sys"
            assert row["pid"] == recorder.pid
            assert row["host"]
            assert row["version"]
            assert row["capacity"] == 40
            assert row["running_jobs"] == 0
            assert row["jobs"] == []
            assert row["state"] == "running"
            assert row["last_seen"]
            assert row["started"]

            # -- runtime settings, applied without a restart ---------------------------------
            initial = await call(client, "settings/get")
            assert initial["version"] == 0
            assert initial["settings"]["max_jobs"] == {}
            updated = await call(
                client,
                "settings/update",
                {"max_jobs": {"recorder": 3, "recorder-sys": 2}, "disk_warning_pct": 70},
            )
            assert updated["version"] == 1
            assert updated["settings"]["max_jobs"] == {"recorder": 3, "recorder-sys": 2}

            async def capacity_applied() -> bool:
                row = await recorder_row()
                return bool(row) and row["capacity"] == 2  # the node id wins over the service

            await eventually(capacity_applied, what="capacity 2 on the recorder's row")
            assert reloaded
            assert reloaded[0]["type"] == "config_reloaded"
            assert reloaded[0]["version"] == 1
            assert reloaded[0]["changed"] == ["disk_warning_pct", "max_jobs"]
            assert client.app.state.reelhouse.settings.disk_warning_pct == 70  # type: ignore[attr-defined]
            assert "runtime_settings_applied" in recorder.output()

            reset = await call(client, "settings/update", {"max_jobs": None})
            assert reset["version"] == 2
            assert reset["settings"]["max_jobs"] == {}
            assert reset["settings"]["disk_warning_pct"] == 70  # untouched

            async def capacity_back() -> bool:
                row = await recorder_row()
                return bool(row) and row["capacity"] == 40

            await eventually(capacity_back, what="capacity back to the environment's 40")

            # -- logs: the recorder's warning, shipped ----------------------------------------
            since = datetime.now(UTC) - timedelta(seconds=1)
            await nc.publish(Subjects(prefix).command("recorder", "start"), b"not json")
            await nc.flush()

            async def shipped() -> list[dict[str, Any]]:
                rows = await call(client, "system/getLogs", {"service": "recorder"})
                return [r for r in rows if r["event"] == "hint_invalid"]

            rows = await eventually(shipped, what="the recorder's hint_invalid record")
            record = rows[0]
            assert record["level"] == "warning"
            assert record["node"] == "recorder-sys"
            assert record["fields"]["subject"].endswith(".cmd.recorder.start")
            window = await call(
                client,
                "system/getLogs",
                {"from": since.isoformat(), "to": datetime.now(UTC).isoformat(), "limit": 5},
            )
            assert any(r["event"] == "hint_invalid" for r in window)
            assert (
                await call(client, "system/getLogs", {"level": "error", "service": "recorder"})
                == []
            )
            assert (
                await call(
                    client, "system/getLogs", {"to": since.isoformat(), "service": "recorder"}
                )
                == []
            )
    finally:
        await nc.close()
        with contextlib.suppress(Exception):
            await recorder.terminate(timeout=20)
        await recorder.kill()


async def test_settings_validation(settings_env: dict[str, str], db: Any) -> None:
    async with api(settings_env) as client:
        err = await call(
            client, "settings/update", {"disk_warning_pct": 90, "disk_critical_pct": 80}, 400
        )
        assert err["error"]["field"] == "disk_warning_pct"
        err = await call(client, "settings/update", {"max_jobs": {"recorder": 0}}, 400)
        assert err["error"]["field"].startswith("max_jobs")
        err = await call(client, "settings/update", {"colour": "blue"}, 400)
        assert err["error"]["field"] == "colour"
        assert (await call(client, "settings/get"))["version"] == 0  # nothing half-written
        viewer = await stored_user(db, "viewer")
        token = issue_access_token(client.app.state.jwt_secret, viewer, 300, version=0)  # type: ignore[attr-defined]
        for path in ("settings/update", "system/getLogs", "system/getDependencies"):
            body = {"disk_warning_pct": 50} if path == "settings/update" else {}
            err = await call(client, path, body, 403, headers={"x-access-token": token})
            assert err["error"]["code"] == "FORBIDDEN"
        # Settings and logs are deployment-wide: an admin of another tenant may not touch them.
        tenant_admin = await stored_user(db, "admin", "acme")
        token = issue_access_token(client.app.state.jwt_secret, tenant_admin, 300, version=0)  # type: ignore[attr-defined]
        for path in ("settings/update", "settings/get", "system/getLogs"):
            body = {"disk_warning_pct": 50} if path == "settings/update" else {}
            err = await call(client, path, body, 403, headers={"x-access-token": token})
            assert "default tenant" in err["error"]["message"]
        assert (await call(client, "settings/get"))["version"] == 0


async def test_dependencies_name_versions_protocols_and_codecs(
    settings_env: dict[str, str], db: Any
) -> None:
    async with api(settings_env) as client:
        deps = await call(client, "system/getDependencies")
        ffmpeg = deps["ffmpeg"]
        assert ffmpeg["version"][0].isdigit()
        assert ffmpeg["path"]
        assert {"srt", "rtmp", "udp", "hls", "file"} <= set(ffmpeg["protocols"]["input"])
        assert {"srt", "rtmp", "udp"} <= set(ffmpeg["protocols"]["output"])
        encoders = {e["name"]: e["type"] for e in ffmpeg["encoders"]}
        assert encoders.get("libx264") == "video"
        assert encoders.get("aac") == "audio"
        decoders = {d["name"]: d["type"] for d in ffmpeg["decoders"]}
        assert decoders.get("h264") == "video"
        assert "libavformat" in ffmpeg["libraries"]
        assert deps["ffprobe"]["version"] == ffmpeg["version"]
        again = await call(client, "system/getDependencies")
        assert again["checked"] == deps["checked"]  # cached


def test_parsers_on_captured_output() -> None:
    protocols = "Supported file protocols:\nInput:\n  file\n  srt\nOutput:\n  file\n  rtmp\n"
    assert parse_protocols(protocols) == {"input": ["file", "srt"], "output": ["file", "rtmp"]}
    encoders = (
        "Encoders:\n V..... = Video\n A..... = Audio\n ------\n"
        " V....D libx264              libx264 H.264 / AVC (codec h264)\n"
        " A..... aac                  AAC (Advanced Audio Coding)\n"
        " S..... srt                  SubRip subtitle\n"
    )
    assert parse_codecs(encoders) == [
        {"name": "libx264", "type": "video", "description": "libx264 H.264 / AVC (codec h264)"},
        {"name": "aac", "type": "audio", "description": "AAC (Advanced Audio Coding)"},
        {"name": "srt", "type": "subtitle", "description": "SubRip subtitle"},
    ]


async def test_logs_are_capped_by_count_and_age(db: Any) -> None:
    now = datetime.now(UTC)
    docs = [
        {"ts": now - timedelta(seconds=i), "level": "warning", "level_no": 30, "event": f"e{i}"}
        for i in range(150)
    ]
    docs.append({"ts": now - timedelta(days=30), "level": "error", "level_no": 40, "event": "old"})
    await db[LOGS_COLLECTION].insert_many(docs)
    deleted = await trim_logs(db, max_count=100, max_age_s=7 * 86400)
    assert deleted == 51
    left = [d["event"] async for d in db[LOGS_COLLECTION].find().sort("ts", -1)]
    assert left == [f"e{i}" for i in range(100)]  # the newest kept


async def test_runtime_job_defaults_and_rate_limits_apply_without_a_restart(
    settings_env: dict[str, str], db: Any
) -> None:
    async with api(settings_env) as client:
        body = recording_payload(0)
        body.pop("delete_after", None)
        before = await call(client, "recording/create", body)
        assert before["delete_after"] == 0
        await call(client, "settings/update", {"job_defaults": {"recording": {"delete_after": 7}}})
        defaulted = await call(client, "recording/create", body)
        assert defaulted["delete_after"] == 7  # a field the request left out
        given = await call(client, "recording/create", {**body, "delete_after": 3})
        assert given["delete_after"] == 3  # the request wins
        # Each default is checked as the create body's field when it is stored (issue 20,
        # item 6: the spec's schema of job_defaults is the create body's); nothing is stored.
        bad = {"job_defaults": {"recording": {"delete_after": "soon"}}}
        err = await call(client, "settings/update", bad, 400)
        assert err["error"]["field"] == "job_defaults.recording.delete_after"
        unknown = {"job_defaults": {"recording": {"nope": 1}}}
        err = await call(client, "settings/update", unknown, 400)
        assert err["error"]["field"] == "job_defaults.recording.nope"
        assert (await call(client, "recording/create", body))["delete_after"] == 7
        await call(client, "settings/update", {"job_defaults": {}})

        err = await call(client, "settings/update", {"rate_limits": {"read": "lots"}}, 400)
        assert err["error"]["field"].startswith("rate_limits")
        viewer = await make_key(client, "viewer")
        await call(client, "settings/update", {"rate_limits": {"read": "2/minute"}})
        seen = []
        for _ in range(3):
            r = await client.post("/api/recording/getCount", json={}, headers=viewer.headers)
            seen.append((r.status_code, r.headers.get("X-RateLimit-Limit")))
        assert seen == [(200, "2"), (200, "2"), (429, "2")], seen
