"""Channels (issue 22): a channel added through the API is found live, recorded and finished when
its origin stops; its rules skip with their events; active recordings pause, resume and stop;
a WebSocket filtered to one channel gets only that channel's events.

Everything is real: the API served by uvicorn, the prober and a recorder as subprocesses,
nats-server, FerretDB, and a live HLS origin made by FFmpeg and served over HTTP, started and
stopped by the test to make the channel go live and offline (the ``url`` platform, resolved by
streamlink's HLS handling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from bson import ObjectId
from support.events import Events
from support.media import HlsSource
from support.services import ServiceProcess, settings_from_env
from support.stack import FAST_RECORDER, HEADERS, TOKEN
from support.wait import eventually
from websockets.asyncio.client import connect

from reelhouse.api.app import create_app
from reelhouse.api.settings import ApiSettings
from reelhouse.common.ffmpeg.probe import probe_file
from reelhouse.common.mongo import Collections

FAST_CHANNELS = {
    "REELHOUSE_CHANNEL_INTERVAL_S": "1",
    "REELHOUSE_CHANNEL_GRACE_S": "3",
    "REELHOUSE_CHANNEL_CHECK_TIMEOUT_S": "5",
    "REELHOUSE_CHANNEL_RECONCILE_S": "1",
    "REELHOUSE_NODE_ID": "prober-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test runner keeps its signals
        yield


class Deployment:
    """The API on a real port (for the WebSocket), a prober and a recorder."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        settings = settings_from_env(ApiSettings, env, bootstrap_token=TOKEN, stop_wait_s=15)
        self.app = create_app(settings)
        self.port = _free_port()
        self.server = _Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                             log_config=None, lifespan="on"))  # fmt: skip
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", headers=HEADERS, timeout=30
        )
        self.prober = ServiceProcess("prober", {**env, **FAST_CHANNELS}, tmp / "prober.log")
        self.recorder = ServiceProcess(
            "recorder", {**env, **FAST_RECORDER, "REELHOUSE_NODE_ID": "recorder-1"},
            tmp / "recorder.log",
        )  # fmt: skip
        # Retention evicts before a quota skip (a cleanup request to the janitor).
        self.janitor = ServiceProcess("janitor", env, tmp / "janitor.log")
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Deployment:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(lambda: self.server.started, timeout=20, what="uvicorn")
        await asyncio.wait_for(self.app.state.ops.events_ready.wait(), 15)
        await self.prober.start()
        await self.recorder.start()
        await self.janitor.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in (self.prober, self.recorder, self.janitor):
            with contextlib.suppress(Exception):
                await proc.terminate(timeout=20)
            await proc.kill()
        await self.client.aclose()
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)

    async def call(self, verb: str, path: str, body: Any = None, **params: Any) -> Any:
        r = await self.client.request(verb, f"/api/{path}", json=body, params=params or None)
        assert r.status_code == 200, (verb, path, r.status_code, r.text)
        return r.json()

    async def recordings(self, channel: str) -> list[dict[str, Any]]:
        return (await self.call("GET", "recordings", channel=channel))["recordings"]

    def logs(self) -> str:
        return (
            f"prober:\n{self.prober.output()[-3000:]}\nrecorder:\n{self.recorder.output()[-2000:]}"
        )


@pytest.fixture
async def deployment(service_env: dict[str, str], db: Any, tmp_path: Path
                     ) -> AsyncIterator[Deployment]:  # fmt: skip
    async with Deployment(service_env, tmp_path) as dep:
        yield dep


class Socket:
    """A WebSocket client that keeps every event it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[dict[str, Any]] = []

    async def __aenter__(self) -> Socket:
        self.ws = await connect(self.url)
        self.frames.append(json.loads(await self.ws.recv()))
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for text in self.ws:
            self.frames.append(json.loads(text))

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await self.ws.close()

    def events(self) -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f.get("type") == "event"]


TITLE = "Chess finals"


def channel_body(name: str, url: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "platform": "url", "url": url, **more}


async def _len_at_least(rows: Any, n: int) -> bool:
    return len(await rows) >= n


def _of(events: Events, channel_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.received if e.get("channel_id") == channel_id and e["type"] == kind]


@pytest.mark.timeout(240)
async def test_channel_records_each_broadcast_with_rules_and_a_channel_filtered_socket(
    deployment: Deployment, settings_env: dict[str, str], tmp_path: Path, db: Any
) -> None:
    dep = deployment
    # The origin names its program (MPEG-TS service_name): the ``url`` platform's title.
    origin = HlsSource(workdir=tmp_path / "origin", metadata={"service_name": TITLE})
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    async with Events(settings_env["REELHOUSE_NATS_URL"], prefix) as events:
        await origin.start()
        try:
            a = await dep.call("POST", "channels", channel_body("A", origin.url))
            ws_url = f"ws://127.0.0.1:{dep.port}/api/events?token={TOKEN}&channel_ids={a['id']}"
            async with Socket(ws_url) as sock:
                assert sock.frames[0]["type"] == "connected"
                assert sock.frames[0]["filter"]["channel_ids"] == [a["id"]]
                b = await dep.call("POST", "channels", channel_body(
                    "B", origin.url, filters={"title_include": ["speedrun"]}))  # fmt: skip
                c = await dep.call("POST", "channels", channel_body(
                    "C", origin.url, schedule={"start_at": "2020-01-01T00:00:00Z",
                                               "stop_at": "2020-01-01T01:00:00Z"}))  # fmt: skip
                # Live within one check interval: A records, B and C are skipped once each.
                rec = (await eventually(lambda: dep.recordings(a["id"]), timeout=30,
                                        what=f"A's recording\n{dep.logs()}"))[0]  # fmt: skip
                assert rec["status"] == "recording"
                assert rec["platform"] == "url"
                assert rec["title"] == TITLE
                await eventually(lambda: _of(events, b["id"], "filter_skip"), timeout=20,
                                 what="B's filter_skip")  # fmt: skip
                await eventually(lambda: _of(events, c["id"], "schedule_skip"), timeout=20,
                                 what="C's schedule_skip")  # fmt: skip
                assert "title_include" in _of(events, b["id"], "filter_skip")[0]["reason"]
                assert await dep.recordings(b["id"]) == []
                assert await dep.recordings(c["id"]) == []
                assert (await dep.call("GET", f"channels/{a['id']}"))["status"] == "recording"
                # The recording job writes: a started job event carrying the channel id.
                await eventually(
                    lambda: [e for e in events.received if e["type"] == "job_started"
                             and e.get("channel_id") == a["id"]],
                    timeout=30, what=f"A's job to start\n{dep.logs()}",
                )  # fmt: skip
                # Streamlink reads the channel and feeds the recorder's FFmpeg (a pipe).
                job = await db[Collections.RECORDINGS].find_one({"_id": ObjectId(rec["job_id"])})
                source = await db[Collections.INPUTS].find_one({"_id": job["input"][0]})
                assert source["application"] == "IO_APPLICATION_STREAMLINK"
                assert source["input_stream_url"] == origin.url
                active = (await dep.call("GET", "recordings/active"))["recordings"]
                assert [r["id"] for r in active] == [rec["id"]]
                # Pause and resume the active recording.
                paused = await dep.call("POST", f"recordings/active/{rec['id']}/pause")
                assert paused["paused"] is True
                await eventually(lambda: events.types(rec["job_id"]).count("job_paused"),
                                 timeout=10, what="job_paused")  # fmt: skip
                resumed = await dep.call("POST", f"recordings/active/{rec['id']}/resume")
                assert resumed["paused"] is False
                await eventually(lambda: sum(e["type"] == "job_started" and
                                             e.get("channel_id") == a["id"]
                                             for e in events.received) >= 2,
                                 timeout=30, what=f"the resumed part\n{dep.logs()}")  # fmt: skip
                # Offline past the grace period: the recording ends and is finished.
                await origin.stop()
                await eventually(lambda: _of(events, a["id"], "recording_ended"), timeout=30,
                                 what=f"recording_ended\n{dep.logs()}")  # fmt: skip

                async def ready() -> dict[str, Any] | None:
                    found = await dep.call("GET", f"recordings/{rec['id']}")
                    return found if found["status"] == "ready" else None

                done = await eventually(ready, timeout=60, what=f"a ready file\n{dep.logs()}")
                assert done["ended_at"] is not None
                assert done["title"] == TITLE
                assert done["duration"] > 1
                assert len(done["files"]) == 1
                assert done["size"] > 0
                path = Path(done["files"][0]["file_path"])
                facts = await probe_file(path)
                assert facts.duration_ms is not None
                assert facts.duration_ms > 1000
                assert {"video", "audio"} <= set(facts.streams)
                listed = await dep.recordings(a["id"])
                assert [r["id"] for r in listed] == [rec["id"]]
                status = await dep.call("GET", f"channels/{a['id']}")
                assert status["status"] == "offline"
                assert status["last_live"] is not None
                # A quota the files already fill: the next broadcast is skipped.
                await dep.call("PUT", f"channels/{a['id']}",
                               channel_body("A", origin.url, quota_bytes=1))  # fmt: skip
                await origin.start()
                await eventually(lambda: _of(events, a["id"], "quota_skip"), timeout=30,
                                 what=f"quota_skip\n{dep.logs()}")  # fmt: skip
                assert len(await dep.recordings(a["id"])) == 1
                changed = _of(events, a["id"], "quota_status_changed")
                assert [e["extra"]["quota_status"] for e in changed] == ["exceeded"]
                assert changed[0]["extra"]["used_bytes"] >= 1
                # Each captured part of a channel's recording: segment_downloaded.
                assert [e for e in events.received if e["type"] == "segment_downloaded"
                        and e.get("channel_id") == a["id"]]  # fmt: skip
                # The socket filtered to A saw A's events and its job's, nobody else's (the relay
                # reads the events stream: it may trail the direct subscriber a little).
                await eventually(lambda: "quota_skip" in {e["type"] for e in sock.events()},
                                 timeout=10, what="quota_skip on the socket")  # fmt: skip
                seen = sock.events()
                kinds = {e["type"] for e in seen}
                assert {"recording_started", "recording_ended", "quota_skip"} <= kinds
                assert "job_started" in kinds
                for event in seen:
                    assert (
                        event.get("channel_id") == a["id"] or event.get("job_id") == rec["job_id"]
                    ), event
                assert not [e for e in seen if e.get("channel_id") in (b["id"], c["id"])]
                # Retention first: with delete_after, the old file is evicted before the quota
                # says no, and the next broadcast records (the file is made 40 days old).
                old = datetime.now(UTC) - timedelta(days=40)
                await db[Collections.FILES].update_many({"entity_id": rec["job_id"]},
                                                        {"$set": {"created": old}})  # fmt: skip
                await dep.call("PUT", f"channels/{a['id']}",
                               channel_body("A", origin.url, quota_bytes=1,
                                            delete_after=30))  # fmt: skip
                await eventually(lambda: _len_at_least(dep.recordings(a["id"]), 2), timeout=30,
                                 what=f"a recording after eviction\n{dep.logs()}")  # fmt: skip
                gone = await db[Collections.FILES].find_one(
                    {"_id": ObjectId(done["files"][0]["id"])}
                )
                assert gone is None or gone["status"] == "deleted"
                assert not path.exists()
                assert len(_of(events, a["id"], "quota_skip")) == 1
                changed = _of(events, a["id"], "quota_status_changed")
                assert changed[-1]["extra"]["quota_status"] == "ok"
        finally:
            await origin.aclose()


@pytest.mark.timeout(180)
async def test_stop_check_and_validation(
    deployment: Deployment, settings_env: dict[str, str], tmp_path: Path
) -> None:
    dep = deployment
    origin = HlsSource(workdir=tmp_path / "origin")
    bad = await dep.client.post("/api/channels", json={"name": "x", "platform": "url"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"
    local = await dep.client.post("/api/channels", json=channel_body("f", "file:///etc/passwd"))
    assert local.status_code == 400
    missing = await dep.client.get("/api/channels/0123456789abcdef01234567")
    assert missing.status_code == 404
    await origin.start()
    try:
        d = await dep.call("POST", "channels", channel_body("D", origin.url))
        images = await dep.client.post(f"/api/channels/{d['id']}/images/fetch")
        assert images.status_code == 422
        assert "no channel images" in images.json()["error"]["message"]
        # The prober answers once it watches the channel (503 before it runs: no responder).
        checked = await eventually(lambda: dep.call("POST", f"channels/{d['id']}/check"),
                                   timeout=20, what=f"a check\n{dep.logs()}")  # fmt: skip
        assert checked["live"] is True
        assert checked["started_at"] is not None
        rec = (await eventually(lambda: dep.recordings(d["id"]), timeout=30,
                                what=f"D's recording\n{dep.logs()}"))[0]  # fmt: skip
        stopped = await dep.call("POST", f"recordings/active/{rec['id']}/stop")
        assert stopped["ended_at"] is not None
        assert stopped["end_reason"] == "stopped"
        assert (await dep.call("GET", "recordings/active"))["recordings"] == []
        # The rest of this broadcast is skipped: still live, not recording again.
        await eventually(
            lambda: dep.call("GET", f"channels/{d['id']}"),
            timeout=10,
            what="channel read",
        )

        async def live_not_recording() -> bool:
            return (await dep.call("GET", f"channels/{d['id']}"))["status"] == "live"

        await eventually(live_not_recording, timeout=15, what=f"live, not recording\n{dep.logs()}")
        await dep.call("POST", f"channels/{d['id']}/check")
        assert len(await dep.recordings(d["id"])) == 1
        listed = await dep.call("GET", "channels", platform="url", status="live")
        assert [c["id"] for c in listed["channels"]] == [d["id"]]
        # Disabled: no checks; deleted: gone with its recordings.
        off = await dep.call("PUT", f"channels/{d['id']}",
                             channel_body("D", origin.url, enabled=False))  # fmt: skip
        assert off["status"] == "disabled"
        refused = await dep.client.post(f"/api/channels/{d['id']}/check")
        assert refused.status_code == 422
        await dep.call("DELETE", f"channels/{d['id']}")
        assert (await dep.client.get(f"/api/channels/{d['id']}")).status_code == 404
        assert await dep.recordings(d["id"]) == []
    finally:
        await origin.aclose()


@pytest.mark.timeout(120)
async def test_platform_credentials_are_sealed_write_only_and_expire_when_refused(
    deployment: Deployment, settings_env: dict[str, str], tmp_path: Path, db: Any
) -> None:
    dep = deployment
    # No REELHOUSE_SECRET_KEY: the API made one beside the JWT secret, readable by its owner only.
    key_file = Path(settings_env["REELHOUSE_BOOTSTRAP_TOKEN_FILE"]).parent / "secret-key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (key_file.parent / "jwt-secret").exists()
    wrong, right = "wrong-token-4f1c9e", "right-token-8a2d7b"
    # An origin behind a login: 401 without the right bearer token.
    origin = HlsSource(workdir=tmp_path / "origin", bearer=right)
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    async with Events(settings_env["REELHOUSE_NATS_URL"], prefix) as events:
        await origin.start()
        try:
            anonymous = await httpx.AsyncClient(base_url=f"http://127.0.0.1:{dep.port}").put(
                "/api/platform-auth/url", json={"token": wrong}
            )
            assert anonymous.status_code == 401
            empty = await dep.client.put("/api/platform-auth/url", json={})
            assert empty.status_code == 400
            answer = await dep.call("PUT", "platform-auth/url", {"token": wrong})
            assert answer["configured"] is True
            assert answer["set_at"] is not None
            assert answer["status"] == "valid"
            # Sealed at rest; never in an answer or an event.
            stored = await db[Collections.PLATFORM_AUTH].find_one({"platform": "url"})
            assert stored is not None
            assert wrong not in json.dumps(stored, default=str)
            assert stored["sealed"].startswith("gAAAAA")  # a Fernet token
            listed = (await dep.client.get("/api/platform-auth")).text
            assert wrong not in listed
            url_row = [p for p in json.loads(listed)["platforms"] if p["platform"] == "url"]
            assert url_row[0]["configured"] is True
            updated = await eventually(
                lambda: [e for e in events.received if e["type"] == "platform_auth_updated"],
                timeout=10, what="platform_auth_updated",
            )  # fmt: skip
            assert updated[0]["platform"] == "url"
            assert wrong not in json.dumps(updated)
            # The resolver presents the token; the origin refuses it: platform_auth_expired, once.
            ch = await dep.call("POST", "channels", channel_body("Z", origin.url))
            expired = await eventually(
                lambda: [e for e in events.received if e["type"] == "platform_auth_expired"],
                timeout=20, what=f"platform_auth_expired\n{dep.logs()}",
            )  # fmt: skip
            assert expired[0]["channel_id"] == ch["id"]
            assert "401" in expired[0]["reason"]
            assert origin.refused
            state = await dep.call("GET", "platform-auth/url")
            assert state["status"] == "expired"
            assert "401" in state["last_error"]
            assert (await dep.call("GET", f"channels/{ch['id']}"))["status"] == "error"
            assert await dep.recordings(ch["id"]) == []
            # The right token: the channel is found live and recorded (the prober's check and
            # the recorder's feed both present it).
            await dep.call("PUT", "platform-auth/url", {"token": right})
            await eventually(lambda: dep.recordings(ch["id"]), timeout=20,
                             what=f"the recording\n{dep.logs()}")  # fmt: skip
            await eventually(
                lambda: [e for e in events.received if e["type"] == "job_started"
                         and e.get("channel_id") == ch["id"]],
                timeout=30, what=f"the recorder's FFmpeg\n{dep.logs()}",
            )  # fmt: skip
            assert len([e for e in events.received if e["type"] == "platform_auth_expired"]) == 1
        finally:
            await origin.aclose()


@pytest.mark.timeout(120)
async def test_shutdown_is_local_and_admin_only_then_finishes_recordings_and_ends_the_services(
    deployment: Deployment, tmp_path: Path, db: Any
) -> None:
    dep = deployment
    path = "/api/system/shutdown"
    base = f"http://127.0.0.1:{dep.port}"
    async with httpx.AsyncClient(base_url=base) as anonymous:
        assert (await anonymous.post(path)).status_code == 401
    operator = (await dep.call("POST", "keys/create", {"name": "ops", "role": "operator"}))["key"]
    async with httpx.AsyncClient(base_url=base, headers={"x-access-token": operator}) as client:
        refused = await client.post(path)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "FORBIDDEN"
    # An admin from another machine (the same app, reached with a remote client address).
    remote = httpx.ASGITransport(app=dep.app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=remote, base_url=base, headers=HEADERS) as client:
        far = await client.post(path)
        assert far.status_code == 403
        assert "loopback" in far.json()["error"]["message"]
    origin = HlsSource(workdir=tmp_path / "origin")
    await origin.start()
    try:
        ch = await dep.call("POST", "channels", channel_body("S", origin.url))
        rec = (await eventually(lambda: dep.recordings(ch["id"]), timeout=30,
                                what=f"the recording\n{dep.logs()}"))[0]  # fmt: skip

        async def writing() -> bool:
            found = await db[Collections.FILES].find_one({"entity_id": rec["job_id"]})
            return found is not None

        await eventually(writing, timeout=30, what=f"a file being written\n{dep.logs()}")
        # In the test the API is uvicorn in this process: it ends its server, not the runner.
        dep.app.state.request_exit = lambda: setattr(dep.server, "should_exit", True)
        answer = await dep.client.post(path)
        assert answer.status_code == 202, answer.text
        assert answer.json()["recordings"] == [rec["id"]]
        # The recording is finished and processed, then every service exits 0, the API too.
        assert await dep.recorder.wait(timeout=60) == 0, dep.logs()
        assert await dep.prober.wait(timeout=20) == 0, dep.logs()
        assert dep.task is not None
        await asyncio.wait_for(dep.task, 30)
        done = await db[Collections.CHANNEL_RECORDINGS].find_one({"_id": ObjectId(rec["id"])})
        assert done["end_reason"] == "shutdown"
        files = await db[Collections.FILES].find({"entity_id": rec["job_id"]}).to_list(None)
        assert files
        assert {f["status"] for f in files} == {"ready"}, files
        facts = await probe_file(Path(files[0]["file_path"]))
        assert facts.duration_ms is not None
        assert facts.duration_ms > 500
    finally:
        await origin.aclose()
