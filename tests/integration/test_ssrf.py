"""Server-side requests (issue 20, item 1): probing is an operator action; loopback, link-local,
metadata and private addresses are refused by default (at the resolved address); the allow-list
opens them; failures report a class, never the upstream's text; redirects to a refused address
are not followed; webhooks are held to the same policy.

Real nats-server, FerretDB, the prober subprocess and ffprobe. Each test sets
``REELHOUSE_PROBE_ALLOW_NETWORKS`` itself (the suite's default allows loopback, as ``make up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.micro.request import ERROR_CODE_HEADER
from pymongo.asynchronous.database import AsyncDatabase
from support.auth import make_key
from support.media import free_port
from support.seeds import recording_payload, restream_payload, seed_payloads
from support.services import ServiceProcess
from support.stack import HEADERS, Stack, running_stack
from support.wait import eventually

from reelhouse.common.contracts.streams import ProbeRequest
from reelhouse.common.subjects import Subjects

REFUSED_BY_DEFAULT = [
    "srt://127.0.0.1:{port}",  # loopback
    "rtmp://localhost:{port}/live/x",  # a name that resolves to loopback
    "rtsp://[::1]:{port}/x",  # IPv6 loopback
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
    "http://metadata.google.internal/computeMetadata/v1/",  # metadata by name
    "https://169.254.10.20/x.m3u8",  # link-local
    "rtmp://10.1.2.3/live/x",  # private
    "srt://192.168.1.10:9000",  # private
    "http://[::ffff:127.0.0.1]:{port}/x.m3u8",  # loopback inside IPv6
    "rtsp://0.0.0.0:{port}/x",  # unspecified: connecting there reaches this host
]


class Probed:
    """One test's stack (API in-process) and prober, with one address policy."""

    def __init__(self, stack: Stack, nc: nats.NATS, prober: ServiceProcess | None) -> None:
        self.stack = stack
        self.nc = nc
        self.prober = prober
        self.subjects = Subjects(stack.env["REELHOUSE_SUBJECT_PREFIX"])

    async def info(self, url: str, headers: dict[str, str] | None = None, **body: Any):
        return await self.stack.client.post(
            "/api/streams/getStreamInfo",
            json={"stream_url": url, **body},
            headers=headers or HEADERS,
        )

    async def ask_prober(self, url: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Ask the prober over NATS directly (the API is not its only caller)."""
        reply = await self.nc.request(
            self.subjects.probe(), ProbeRequest(url=url).model_dump_json().encode(), timeout=15
        )
        return dict(reply.headers or {}), json.loads(reply.data)

    async def ffprobes_started(self) -> int:
        subject = f"$SRV.STATS.{self.subjects.probe_service_name()}"
        reply = await self.nc.request(subject, b"", timeout=5)
        return json.loads(reply.data)["endpoints"][0]["data"]["ffprobe_started"]


Maker = Callable[..., Awaitable[Probed]]


@pytest.fixture
async def probed(
    service_env: dict[str, str], tmp_path: Path, db: AsyncDatabase
) -> AsyncIterator[Maker]:
    """``await probed(allow="...", prober=True)``: the stack with that allow-list."""
    exits = contextlib.AsyncExitStack()

    async def make(*, allow: str, prober: bool = True) -> Probed:
        env = {**service_env, "REELHOUSE_PROBE_ALLOW_NETWORKS": allow}
        stack = await exits.enter_async_context(running_stack(env, tmp_path))
        nc = await nats.connect(env["REELHOUSE_NATS_URL"])
        exits.push_async_callback(nc.close)
        proc = None
        if prober:
            proc = ServiceProcess("prober", {**env, "REELHOUSE_NODE_ID": "prober-1"},
                                  tmp_path / "prober.log")  # fmt: skip
            await proc.start()
            exits.push_async_callback(proc.kill)
            exits.push_async_callback(_terminate, proc)
        probed = Probed(stack, nc, proc)
        if proc is not None:

            async def ready() -> bool:
                with contextlib.suppress(Exception):
                    return await probed.ffprobes_started() >= 0
                return False

            await eventually(ready, timeout=20, what=f"the prober\n{proc.output()[-2000:]}")
        return probed

    async with exits:
        yield make


async def _terminate(proc: ServiceProcess) -> None:
    with contextlib.suppress(Exception):
        await proc.terminate(timeout=15)


def refused_shape(r: Any, field: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["field"] == field
    assert error["reason"] == "forbidden_address"
    return error


# -- who may probe ---------------------------------------------------------------------------


async def test_a_viewer_may_not_probe_and_an_operator_may(probed, media_source_factory):
    p = await probed(allow="127.0.0.0/8")
    source = await media_source_factory("srt")
    viewer = await make_key(p.stack.client, "viewer")
    operator = await make_key(p.stack.client, "operator")
    r = await p.info(source.url, headers=viewer.headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "FORBIDDEN"
    assert await p.ffprobes_started() == 0  # refused before anything was asked
    r = await p.info(source.url, headers=operator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["format"]["format_name"] == "mpegts"


# -- what may be reached ---------------------------------------------------------------------


async def test_loopback_link_local_metadata_and_private_are_refused_by_default(probed, db):
    p = await probed(allow="")
    port = free_port()
    for template in REFUSED_BY_DEFAULT:
        url = template.format(port=port)
        error = refused_shape(await p.info(url), "stream_url")
        assert "address" in error["message"], (url, error)
        # The prober refuses it too when asked directly, and never starts ffprobe for it.
        headers, body = await p.ask_prober(url)
        assert headers[ERROR_CODE_HEADER] == "400", (url, headers, body)
        assert (body["field"], body["reason"]) == ("stream_url", "forbidden_address"), url
    assert await p.ffprobes_started() == 0

    # Every URL the engine would fetch for a user: refused at create/update, nothing stored.
    loopback = f"srt://localhost:{port}"
    recording = recording_payload(0, active=True)
    recording["input"]["input_stream_url"] = loopback
    r = await p.stack.client.post("/api/recording/create", json=recording, headers=HEADERS)
    refused_shape(r, "input.input_stream_url")
    restream = restream_payload(0, active=True)
    restream["input"]["input_stream_url"] = "srt://8.8.8.8:9000"
    restream["output"] = {"output_type": "OUTPUT_TYPE_SRT_URL",
                          "output_stream_url": "srt://169.254.169.254:9000"}  # fmt: skip
    r = await p.stack.client.post("/api/restream/create", json=restream, headers=HEADERS)
    refused_shape(r, "output.0.output_stream_url")
    stream = {**seed_payloads("streams-api.txt", "/api/streams/create")[0], "stream_url": loopback}
    r = await p.stack.client.post("/api/streams/create", json=stream, headers=HEADERS)
    refused_shape(r, "stream_url")
    for collection in ("recordings", "restreams", "streams", "inputs", "outputs"):
        assert await db[collection].count_documents({}) == 0, collection


async def test_the_allow_list_opens_exactly_what_it_covers(probed, media_source_factory):
    p = await probed(allow="127.0.0.0/8")
    source = await media_source_factory("srt")
    r = await p.info(source.url)
    assert r.status_code == 200, r.text
    by_name = source.url.replace("127.0.0.1", "localhost")
    r = await p.info(by_name)
    assert r.status_code == 200, r.text  # localhost resolves to 127.0.0.1 (covered)
    refused_shape(await p.info(f"srt://[::1]:{source.port}"), "stream_url")  # ::1 is not
    refused_shape(await p.info("http://10.0.0.1/x.m3u8"), "stream_url")
    # Metadata addresses stay refused even when an allowed network covers them.
    p2 = await probed(allow="169.254.0.0/16", prober=False)
    refused_shape(await p2.info("http://169.254.169.254/latest/"), "stream_url")


# -- what a failure says ---------------------------------------------------------------------

SECRET = "SECRET-BANNER-7f3a"


@contextlib.asynccontextmanager
async def tcp_server(answer: bytes, seen: list[bytes] | None = None) -> AsyncIterator[int]:
    """A loopback TCP server that reads a request head and answers ``answer``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await asyncio.wait_for(reader.read(4096), 5)
            if seen is not None:
                seen.append(head)
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_failures_report_a_class_never_the_upstream_text(probed):
    p = await probed(allow="127.0.0.0/8")
    banner = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{SECRET}\n"
    error_page = f"HTTP/1.1 500 {SECRET}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with (
        tcp_server(banner.encode() * 50) as text_port,
        tcp_server(error_page.encode()) as error_port,
    ):
        cases = [
            (f"http://127.0.0.1:{text_port}/x.m3u8", 502, "not_media"),
            (f"http://127.0.0.1:{error_port}/x.m3u8", 502, "refused"),
            (f"rtmp://127.0.0.1:{free_port()}/live/x", 502, "refused"),
            ("rtmp://no-such-host.invalid/live/x", 502, "unreachable"),
        ]
        for url, status, reason in cases:
            r = await p.info(url, timeout=8)
            assert r.status_code == status, (url, r.text)
            error = r.json()["error"]
            assert error["reason"] == reason, (url, error)
            assert error["field"] == "stream_url"
            assert SECRET not in r.text, r.text
            assert "Server returned" not in error["message"]  # nothing of ffprobe's text
            assert "Invalid data" not in error["message"]


async def test_a_redirect_to_a_refused_address_is_not_followed(probed):
    # Only 127.0.0.1 is allowed; 127.0.0.2 (a loopback address too) is not. The source on
    # 127.0.0.1 redirects there; the target must never see a connection.
    p = await probed(allow="127.0.0.1/32")
    target_seen: list[bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_seen.append(await reader.read(4096))
        writer.close()

    hidden = await asyncio.start_server(target, "127.0.0.2", 0)
    hidden_port = hidden.sockets[0].getsockname()[1]
    location = f"http://127.0.0.2:{hidden_port}/internal/index.m3u8"
    redirect = (
        f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    seen: list[bytes] = []
    try:
        async with tcp_server(redirect, seen) as port:
            for url in (f"http://127.0.0.1:{port}/live.m3u8", f"http://localhost:{port}/x.m3u8"):
                r = await p.info(url, timeout=8)
                assert r.status_code == 502, r.text
                error = r.json()["error"]
                assert (error["field"], error["reason"]) == ("stream_url", "forbidden_address")
                assert "127.0.0.2" not in r.text
        assert seen, "the redirecting source was asked"
        assert target_seen == [], "the redirect was followed to a refused address"
    finally:
        hidden.close()


# -- webhooks --------------------------------------------------------------------------------


async def test_a_webhook_to_a_refused_address_is_refused(probed, db):
    p = await probed(allow="", prober=False)
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "https://[::1]/hook",
                "http://169.254.169.254/latest/", "https://192.168.0.10/hook",
                "http://metadata.google.internal/"):  # fmt: skip
        r = await p.stack.client.post("/api/webhooks/create", json={"url": url}, headers=HEADERS)
        refused_shape(r, "url")
    assert await db.webhooks.count_documents({}) == 0
    r = await p.stack.client.post("/api/webhooks/getAll", json={}, headers=HEADERS)
    assert r.json() == []
    # A public receiver is accepted (it is not called until an event happens).
    r = await p.stack.client.post(
        "/api/webhooks/create", json={"url": "https://93.184.215.14/hook"}, headers=HEADERS
    )
    assert r.status_code == 200, r.text
