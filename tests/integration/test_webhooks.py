"""Webhooks (issue 7): signed deliveries of the tenant's events, retries with backoff, a log.

The receiver is a tiny HTTP server on 127.0.0.1 (``asyncio.start_server``) that answers with
the status codes a test scripts; the API runs in-process against the session's real NATS
(JetStream) and FerretDB; events are published on NATS as the services publish them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from bson import ObjectId
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import JobEvent
from reelhouse.common.subjects import Subjects

SECRET = "webhook-secret-0123456789abcdef"


class Receiver:
    """An HTTP receiver on loopback that records requests and answers with scripted codes."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.got = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/reelhouse"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            code = self.codes.pop(0) if self.codes else 200
            self.requests.append(
                {"method": method, "path": path, "headers": headers, "body": body, "code": code,
                 "at": time.monotonic()}
            )  # fmt: skip
            writer.write(
                f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            self.got.set()
        finally:
            writer.close()

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests"
            self.got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.got.wait(), 0.5)


@contextlib.asynccontextmanager
async def api(settings_env: dict[str, str], **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    fast = {"webhook_retry_initial_s": 0.3, "webhook_poll_s": 0.1, **overrides}
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN, **fast)
    async with api_client(settings) as client:
        await asyncio.wait_for(client.app.state.ops.events_ready.wait(), 15)  # type: ignore[attr-defined]
        yield client


async def call(client: httpx.AsyncClient, path: str, body: Any = None, status: int = 200) -> Any:
    r = await client.post(f"/api/{path}", json=body, headers=HEADERS)
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


@pytest.fixture
async def nc(settings_env: dict[str, str]) -> AsyncIterator[Any]:
    conn = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    yield conn
    await conn.close()


async def publish(nc: Any, prefix: str, job_id: str, event: str, tenant: str = "default") -> None:
    message = JobEvent(type=event, module="recording", job_id=job_id, tenant=tenant)
    await nc.publish(
        Subjects(prefix).event("recording", job_id, event), message.model_dump_json().encode()
    )
    await nc.flush()


def verify(secret: str, request: dict[str, Any]) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request["headers"]["x-reelhouse-signature"])


async def test_signed_delivery_of_matching_events_only(
    settings_env: dict[str, str], db: Any, nc: Any
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    job = str(ObjectId())
    async with api(settings_env) as client, Receiver() as receiver:
        hook = await call(
            client,
            "webhooks/create",
            {"url": receiver.url, "events": ["job_started"], "secret": SECRET},
        )
        assert hook["secret"] == SECRET
        assert hook["events"] == ["job_started"]
        await publish(nc, prefix, job, "job_stopped")  # filtered out
        await publish(nc, prefix, str(ObjectId()), "job_started", tenant="other")  # not ours
        await publish(nc, prefix, job, "job_started")
        await receiver.wait_for(1)
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 1
        request = receiver.requests[0]
        assert request["method"] == "POST"
        assert request["path"] == "/hooks/reelhouse"
        assert verify(SECRET, request)
        assert not verify("some-other-secret-0123456789", request)
        body = json.loads(request["body"])
        assert body["type"] == "job_started"
        assert body["event"]["job_id"] == job
        assert body["event"]["tenant"] == "default"
        assert request["headers"]["x-reelhouse-delivery"] == body["id"]
        assert request["headers"]["x-reelhouse-event"] == "job_started"
        assert request["headers"]["content-type"] == "application/json"

        listed = await call(client, "webhooks/getAll")
        assert [h["id"] for h in listed] == [hook["id"]]
        assert SECRET not in json.dumps(listed)  # masked
        assert listed[0]["deliveries"]["delivered"] == 1
        log = await call(client, "webhooks/getDeliveries", {"id": hook["id"]})
        assert [d["status"] for d in log] == ["delivered"]
        assert log[0]["id"] == body["id"]
        assert log[0]["attempts"][0]["status_code"] == 200


async def test_a_receiver_that_fails_twice_gets_the_third_retry(
    settings_env: dict[str, str], db: Any, nc: Any
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    job = str(ObjectId())
    async with api(settings_env) as client, Receiver([500, 503, 200]) as receiver:
        hook = await call(client, "webhooks/create", {"url": receiver.url, "secret": SECRET})
        await publish(nc, prefix, job, "job_failed")
        await receiver.wait_for(3, timeout=20)
        codes = [r["code"] for r in receiver.requests]
        assert codes == [500, 503, 200]
        ids = {r["headers"]["x-reelhouse-delivery"] for r in receiver.requests}
        assert len(ids) == 1  # one delivery, three attempts
        assert [r["headers"]["x-reelhouse-attempt"] for r in receiver.requests] == ["1", "2", "3"]
        assert all(verify(SECRET, r) for r in receiver.requests)
        assert len({r["body"] for r in receiver.requests}) == 1  # the same body every time
        gaps = [
            b["at"] - a["at"]
            for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)
        ]
        assert gaps[0] >= 0.25
        assert gaps[1] >= 0.5

        async def delivered() -> list[dict[str, Any]]:
            return await call(client, "webhooks/getDeliveries", {"id": hook["id"]})

        deadline = time.monotonic() + 5
        while (log := await delivered())[0]["status"] != "delivered":
            assert time.monotonic() < deadline, log
            await asyncio.sleep(0.1)
        assert log[0]["attempt_count"] == 3
        assert [a["status_code"] for a in log[0]["attempts"]] == [500, 503, 200]
        assert log[0]["attempts"][0]["error"] == "HTTP 500"


async def test_gives_up_after_max_attempts_and_remove_stops_deliveries(
    settings_env: dict[str, str], db: Any, nc: Any
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    async with (
        api(settings_env, webhook_max_attempts=2, webhook_retry_initial_s=0.1) as client,
        Receiver([500] * 10) as receiver,
    ):
        hook = await call(
            client, "webhooks/create", {"url": receiver.url, "modules": ["recording"]}
        )
        assert len(hook["secret"]) >= 32  # generated, shown once
        await publish(nc, prefix, str(ObjectId()), "file_ready")
        await receiver.wait_for(2)
        deadline = time.monotonic() + 5
        while (log := await call(client, "webhooks/getDeliveries", {"id": hook["id"]}))[0][
            "status"
        ] != "failed":
            assert time.monotonic() < deadline, log
            await asyncio.sleep(0.1)
        assert log[0]["attempt_count"] == 2
        assert log[0]["last_error"] == "HTTP 500"
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == 2

        await call(client, "webhooks/remove", {"id": hook["id"]})
        assert await call(client, "webhooks/getAll") == []
        await publish(nc, prefix, str(ObjectId()), "file_ready")
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 2
        await call(client, "webhooks/remove", {"id": hook["id"]}, status=404)


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "not a url"],
)
async def test_only_http_urls_are_accepted(settings_env: dict[str, str], db: Any, url: str) -> None:
    async with api(settings_env) as client:
        err = await call(client, "webhooks/create", {"url": url}, status=400)
        assert err["error"]["code"] == "VALIDATION_ERROR"
        assert err["error"]["field"] == "url"
        err = await call(
            client, "webhooks/create", {"url": "https://x.example/h", "events": ["nope"]}, 400
        )
        assert err["error"]["field"].startswith("events")
