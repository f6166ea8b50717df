"""``GET /api/events``: the WebSocket relay of events and stats (issue 7).

The API runs for real (uvicorn on a loopback port, lifespan and all) against the session's
nats-server (JetStream) and FerretDB. Events and stats are published on NATS exactly as the
services publish them (core NATS on the subjects of ``reelhouse.common.subjects``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from bson import ObjectId
from support.auth import stored_user
from support.services import settings_from_env
from support.stack import HEADERS, TOKEN
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from reelhouse.api.accounts.principal import issue_access_token
from reelhouse.api.app import create_app
from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import JobEvent, JobStats, ProcessData
from reelhouse.common.subjects import Subjects


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test runner keeps its signals
        yield


class LiveApi:
    """The API app served by uvicorn on 127.0.0.1 (WebSockets need a real server)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_base = f"ws://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self.server = _Server(config)
        self.task: asyncio.Task[Any] | None = None
        self.client = httpx.AsyncClient(base_url=self.base, headers=HEADERS, timeout=20)

    async def __aenter__(self) -> LiveApi:
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.05)
        # The events stream is made in the lifespan's background: wait until it is there.
        await asyncio.wait_for(self.app.state.ops.events_ready.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)

    async def ok(self, path: str, body: Any = None) -> Any:
        r = await self.client.post(f"/api/{path}", json=body)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


@contextlib.asynccontextmanager
async def live_api(settings_env: dict[str, str], **overrides: Any) -> AsyncIterator[LiveApi]:
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN, **overrides)
    async with LiveApi(settings) as api:
        yield api


@pytest.fixture
async def api(settings_env: dict[str, str], db: Any) -> AsyncIterator[LiveApi]:
    async with live_api(settings_env) as api:
        yield api


@pytest.fixture
async def nc(settings_env: dict[str, str]) -> AsyncIterator[Any]:
    conn = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    yield conn
    await conn.close()


class Client:
    """A WebSocket client that keeps every frame it receives."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"not received; got {self.frames}"
            frame = await self.next(left)
            if predicate(frame):
                return frame

    async def drain(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                await self.next(seconds)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event"]


@contextlib.asynccontextmanager
async def ws_client(api: LiveApi, query: str = "", token: str = TOKEN) -> AsyncIterator[Client]:
    async with connect(f"{api.ws_base}/api/events?token={token}{query}") as ws:
        yield Client(ws)


async def publish_event(
    nc: Any, prefix: str, job_id: str, event: str, *, tenant: str = "default", **fields: Any
) -> None:
    message = JobEvent(type=event, module="recording", job_id=job_id, tenant=tenant, **fields)
    subject = Subjects(prefix).event("recording", job_id, event)
    await nc.publish(subject, message.model_dump_json().encode())
    await nc.flush()


async def publish_stats(nc: Any, prefix: str, job_id: str, *, tenant: str = "default") -> None:
    stats = JobStats(
        module="recording",
        job_id=job_id,
        tenant=tenant,
        node="recorder-1",
        state="running",
        processData=ProcessData(id=job_id, bitrate_kbits=1234, bitrate="1234.0kbits/s"),
    )
    await nc.publish(Subjects(prefix).stats("recording", job_id), stats.model_dump_json().encode())
    await nc.flush()


async def test_one_job_filter_stats_and_resume_after_reconnect(
    api: LiveApi, nc: Any, settings_env: dict[str, str]
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    job_a, job_b = str(ObjectId()), str(ObjectId())

    async with ws_client(api) as client:
        hello = await client.next()
        assert hello["type"] == "connected"
        assert hello["tenant"] == "default"
        assert hello["summary"]["recording"]["total"] == 0
        assert isinstance(hello["last_id"], int)
        await client.send({"type": "subscribe", "job_ids": [job_a], "stats": True})
        sub = await client.until(lambda f: f["type"] == "subscribed")
        assert sub["filter"]["job_ids"] == [job_a]
        assert sub["filter"]["stats"] is True

        await publish_event(nc, prefix, job_b, "job_started")
        await publish_event(nc, prefix, job_a, "job_started", node="recorder-1")
        await publish_stats(nc, prefix, job_b)
        await publish_stats(nc, prefix, job_a)
        started = await client.until(lambda f: f["type"] == "event")
        assert started["event"]["type"] == "job_started"
        assert started["event"]["job_id"] == job_a
        assert started["id"] > hello["last_id"]
        stats = await client.until(lambda f: f["type"] == "stats")
        assert stats["stats"]["job_id"] == job_a
        assert stats["stats"]["processData"]["bitrate_kbits"] == 1234
        await client.drain(1.0)
        mentioned = {
            (f.get("event") or f.get("stats") or {}).get("job_id")
            for f in client.frames
            if f["type"] in ("event", "stats")
        }
        assert mentioned == {job_a}, client.frames
        last_id = started["id"]

    # While the client is away: more of both jobs.
    await publish_event(nc, prefix, job_a, "file_opened")
    await publish_event(nc, prefix, job_b, "job_stopped")
    await publish_event(nc, prefix, job_a, "job_stopped", reason="stopped by the operator")

    async with ws_client(api, f"&last_id={last_id}&job_ids={job_a}") as client:
        hello = await client.next()
        assert hello["type"] == "connected"
        assert hello["from_id"] == last_id + 1
        assert hello["gap"] is False
        first = await client.until(lambda f: f["type"] == "event")
        second = await client.until(lambda f: f["type"] == "event")
        assert [first["event"]["type"], second["event"]["type"]] == ["file_opened", "job_stopped"]
        assert first["id"] > last_id
        assert second["id"] > first["id"]
        # ...and then live events continue on the same connection, without a gap.
        await publish_event(nc, prefix, job_a, "job_started")
        live = await client.until(lambda f: f["type"] == "event")
        assert live["event"]["type"] == "job_started"
        assert live["id"] > second["id"]
        await client.drain(0.5)
        assert {e["event"]["job_id"] for e in client.events()} == {job_a}

        # A `resume` message replays from any id on a live connection too.
        await client.send({"type": "resume", "last_id": last_id})
        resumed = await client.until(lambda f: f["type"] == "resumed")
        assert resumed["from_id"] == last_id + 1
        replayed = await client.until(lambda f: f["type"] == "event")
        assert replayed["id"] == first["id"]


async def test_tenants_never_see_each_other(
    api: LiveApi, nc: Any, settings_env: dict[str, str]
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    other = await stored_user(api.app.state.reelhouse.db, "viewer", "other")
    other_token = issue_access_token(api.app.state.jwt_secret, other, 300, version=0)
    mine, theirs = str(ObjectId()), str(ObjectId())
    async with ws_client(api, "&stats=1") as admin, ws_client(api, "&stats=1", other_token) as o:
        assert (await admin.next())["tenant"] == "default"
        hello = await o.next()
        assert hello["tenant"] == "other"
        assert hello["filter"]["stats"] is True
        await publish_event(nc, prefix, mine, "job_started")
        await publish_stats(nc, prefix, mine)
        await publish_event(nc, prefix, theirs, "job_started", tenant="other")
        await publish_stats(nc, prefix, theirs, tenant="other")
        await admin.until(lambda f: f["type"] == "stats")
        await o.until(lambda f: f["type"] == "stats")
        await admin.drain(0.7)
        await o.drain(0.3)
        for client, job in ((admin, mine), (o, theirs)):
            seen = {
                (f.get("event") or f.get("stats"))["job_id"]
                for f in client.frames
                if f["type"] in ("event", "stats")
            }
            assert seen == {job}, client.frames
            assert {
                (f.get("event") or f.get("stats"))["tenant"]
                for f in client.frames
                if f["type"] in ("event", "stats")
            } == {"other" if job == theirs else "default"}


async def test_bad_token_bad_messages_and_unsubscribe(
    api: LiveApi, nc: Any, settings_env: dict[str, str]
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    async with connect(f"{api.ws_base}/api/events?token=wrong-token-0123456789") as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["type"] == "error"
        assert frame["code"] == "UNAUTHORIZED"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401

    # The header works as well as ?token=.
    async with connect(f"{api.ws_base}/api/events", additional_headers=HEADERS) as ws:
        client = Client(ws)
        assert (await client.next())["type"] == "connected"
        await client.send({"type": "subscribe", "modules": ["nonsense"]})
        err = await client.until(lambda f: f["type"] == "error")
        assert err["code"] == "VALIDATION_ERROR"
        assert "modules" in err["message"]
        await client.send({"type": "ping"})
        await client.until(lambda f: f["type"] == "pong")
        await client.send({"type": "unsubscribe"})  # nothing at all any more
        await client.until(lambda f: f["type"] == "subscribed")
        await publish_event(nc, prefix, str(ObjectId()), "job_started")
        await client.drain(0.7)
        assert client.events() == []


@pytest.mark.slow
async def test_job_started_of_a_real_recording_reaches_its_subscriber(
    api: LiveApi, service_env: dict[str, str], tmp_path: Path, srt_source: Any
) -> None:
    """End to end: a real recorder's job_started and stats, through the API's WebSocket, and
    nothing of a second (never started) job."""
    from support.seeds import recording_payload
    from support.services import ServiceProcess
    from support.stack import FAST_RECORDER

    recorder = ServiceProcess(
        "recorder",
        {**service_env, **FAST_RECORDER, "REELHOUSE_NODE_ID": "recorder-ws"},
        tmp_path / "recorder.log",
    )
    await recorder.start()
    try:
        ids = []
        for index in (0, 1):
            body = recording_payload(index, active=False)
            body["input"]["input_type"] = "INPUT_TYPE_SRT_URL"
            body["input"]["input_stream_url"] = srt_source.url
            ids.append((await api.ok("recording/create", body))["id"])
        job_id, other = ids
        async with ws_client(api, f"&job_ids={job_id}&stats=1") as client:
            await client.next()
            await api.ok("recording/start", {"id": job_id})
            started = await client.until(
                lambda f: f["type"] == "event" and f["event"]["type"] == "job_started", 40
            )
            assert started["event"]["job_id"] == job_id
            stats = await client.until(lambda f: f["type"] == "stats", 15)
            assert stats["stats"]["job_id"] == job_id
            await api.ok("recording/stop", {"id": job_id})
            await client.until(
                lambda f: f["type"] == "event" and f["event"]["type"] == "job_stopped", 30
            )
            seen = {
                (f.get("event") or f.get("stats"))["job_id"]
                for f in client.frames
                if f["type"] in ("event", "stats")
            }
            assert seen == {job_id}
            assert other not in seen
    finally:
        with contextlib.suppress(Exception):
            await recorder.terminate(timeout=20)
        await recorder.kill()


def test_filter_semantics() -> None:
    from reelhouse.api.events.service import EventFilter

    f = EventFilter()
    assert f.matches("recording", "a" * 24, "job_started")
    f.subscribe({"job_ids": ["a" * 24]})
    assert f.matches("recording", "a" * 24, "file_ready")
    assert not f.matches("recording", "b" * 24, "job_started")
    assert not f.matches("storage", None, "disk_warning")  # no job: only if its module is asked
    f.subscribe({"modules": ["storage"], "events": ["disk_warning", "job_started"]})
    assert f.matches("storage", None, "disk_warning")
    assert not f.matches("recording", "a" * 24, "file_ready")  # events narrowed
    f.unsubscribe({"job_ids": ["a" * 24]})
    assert not f.matches("recording", "a" * 24, "job_started")  # emptied: nothing
    f.subscribe({})
    assert f.matches("restream", "c" * 24, "job_failed")  # bare subscribe: everything again
    f.unsubscribe({"modules": ["restream"]})
    assert not f.matches("restream", "c" * 24, "job_failed")
    assert f.matches("recording", "c" * 24, "job_failed")
    with pytest.raises(ValueError, match="events"):
        f.subscribe({"events": ["not_an_event"]})


async def test_a_revoked_token_ends_its_stream_and_refresh_reuse_is_an_event(
    api: LiveApi, settings_env: dict[str, str]
) -> None:
    """Issue 20 (docs/SECURITY.md): an open stream is refused like any other action once its
    token is revoked; a reused refresh token is an ``auth_refresh_reuse`` event of its tenant."""
    username = f"ws-admin-{ObjectId()}"
    password = "correct horse battery"
    await api.ok("users/create", {"username": username, "password": password, "role": "admin"})
    pair = await api.ok("auth/login", {"username": username, "password": password})
    other = await stored_user(api.app.state.reelhouse.db, "admin", "other")
    other_token = issue_access_token(api.app.state.jwt_secret, other, 300, version=0)
    async with (
        ws_client(api, "&modules=auth", pair["access_token"]) as user_ws,
        ws_client(api, "&modules=auth") as admin_ws,
        ws_client(api, "&modules=auth", other_token) as other_ws,
    ):
        for client in (user_ws, admin_ws, other_ws):
            assert (await client.next())["type"] == "connected"
        await api.ok("auth/refresh", {"refresh_token": pair["refresh_token"]})
        reused = {"refresh_token": pair["refresh_token"]}
        r = await api.client.post("/api/auth/refresh", json=reused)
        assert r.status_code == 401

        frame = await admin_ws.until(lambda f: f["type"] == "event", timeout=5)
        assert frame["event"]["type"] == "auth_refresh_reuse"
        assert frame["event"]["user_id"] == pair["user"]["id"]
        assert frame["event"]["tenant"] == "default"

        error = await user_ws.until(lambda f: f["type"] == "error", timeout=1.0)
        assert error["code"] == "UNAUTHORIZED"
        with pytest.raises(ConnectionClosed) as closed:
            await user_ws.next(timeout=1.0)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401

        await other_ws.drain(0.3)  # another tenant never hears of it
        assert not [f for f in other_ws.frames if f["type"] in ("event", "error")]
