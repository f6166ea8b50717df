"""The prober service as a real subprocess: getStreamInfo through the API over NATS, its limits,
and stream monitoring by lease (real nats-server, FerretDB, FFmpeg media sources)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from bson import ObjectId
from nats.micro.request import ERROR_CODE_HEADER
from pymongo.asynchronous.database import AsyncDatabase
from support.media import ffmpeg_children, free_port
from support.seeds import seed_payloads
from support.services import ServiceProcess
from support.stack import HEADERS, Stack, running_stack
from support.wait import eventually

from reelhouse.common.contracts.streams import ProbeRequest
from reelhouse.common.subjects import Subjects

FAST_PROBER = {
    "REELHOUSE_MONITOR_INTERVAL_S": "1",
    "REELHOUSE_MONITOR_TIMEOUT_S": "5",
    "REELHOUSE_MONITOR_RECONCILE_S": "1",
    "REELHOUSE_PROBE_CACHE_S": "1",
}


class Probers:
    """Prober subprocesses of one test, and a NATS connection to look at them."""

    def __init__(self, env: dict[str, str], tmp: Path, nc: nats.NATS) -> None:
        self.env = env
        self.tmp = tmp
        self.nc = nc
        self.subjects = Subjects(env["REELHOUSE_SUBJECT_PREFIX"])
        self.procs: list[ServiceProcess] = []

    async def start(self, **env: str) -> ServiceProcess:
        n = len(self.procs) + 1
        proc = ServiceProcess(
            "prober",
            {**self.env, **FAST_PROBER, "REELHOUSE_NODE_ID": f"prober-{n}", **env},
            self.tmp / f"prober-{n}.log",
        )
        await proc.start()
        self.procs.append(proc)
        await eventually(
            lambda: self.node_ids(expect=n),
            timeout=20,
            what=f"prober-{n} to answer $SRV.PING\n{proc.output()[-2000:]}",
        )
        return proc

    async def _gather(self, subject: str, expect: int) -> list[dict[str, Any]]:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        await self.nc.publish(subject, b"", reply=inbox)
        replies = []
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while len(replies) < expect:
                msg = await sub.next_msg(timeout=1.0)
                replies.append(json.loads(msg.data))
        await sub.unsubscribe()
        return replies

    async def node_ids(self, expect: int) -> set[str] | None:
        pings = await self._gather(f"$SRV.PING.{self.subjects.probe_service_name()}", expect)
        nodes = {p["metadata"]["node"] for p in pings}
        return nodes if len(nodes) >= expect else None

    async def stats(self, expect: int = 1) -> dict[str, dict[str, Any]]:
        """Each live prober's counters and monitored streams, by node id."""
        replies = await self._gather(f"$SRV.STATS.{self.subjects.probe_service_name()}", expect)
        return {r["metadata"]["node"]: r["endpoints"][0]["data"] for r in replies}


@pytest.fixture
async def probers(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Probers]:
    nc = await nats.connect(service_env["REELHOUSE_NATS_URL"])
    group = Probers(service_env, tmp_path, nc)
    try:
        yield group
    finally:
        for proc in group.procs:
            with contextlib.suppress(Exception):
                await proc.terminate(timeout=15)
            await proc.kill()
        await nc.close()


@pytest.fixture
async def stack(service_env: dict[str, str], tmp_path: Path, db: AsyncDatabase):
    async with running_stack(service_env, tmp_path) as stack:
        yield stack


async def streams(stack: Stack, method: str, body: Any = None, *, verb: str = "POST"):
    return await stack.client.request(verb, f"/api/streams/{method}", json=body, headers=HEADERS)


async def stream_info(stack: Stack, url: str, timeout: float | None = None):
    body: dict[str, Any] = {"stream_url": url}
    if timeout is not None:
        body["timeout"] = timeout
    return await streams(stack, "getStreamInfo", body)


def ffprobes(pid: int) -> int:
    return sum(1 for child, _ in ffmpeg_children(pid) if child)


async def test_stream_info_of_a_live_1080p_srt_source(stack, probers, media_source_factory):
    source = await media_source_factory("srt", size="1920x1080", fps=30)
    await probers.start()
    seed = seed_payloads("streams-api.txt", "/api/streams/getStreamInfo")[0]
    url = f"{source.url}?streamid=publisher/main-stage/srt-main"
    assert seed["stream_url"].split("?")[1] == url.split("?")[1]
    r = await stream_info(stack, url)
    assert r.status_code == 200, r.text
    info = r.json()
    assert set(info) == {"streams", "format"}
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1920, 1080)
    assert video["avg_frame_rate"] == "30/1"
    assert video["pix_fmt"] == "yuv420p"
    assert (audio["codec_name"], audio["sample_rate"]) == ("aac", "48000")
    assert (audio["channels"], audio["channel_layout"]) == (2, "stereo")
    fmt = info["format"]
    assert fmt["format_name"] == "mpegts"
    assert fmt["nb_streams"] == 2
    assert fmt["filename"] == source.url  # no query: stream ids and passphrases stay private
    assert "probe_score" in fmt

    # A dashboard polling again at once is answered from the cache, without a second ffprobe.
    before = (await probers.stats())["prober-1"]
    again = await stream_info(stack, url)
    assert again.status_code == 200
    assert again.json()["streams"] == info["streams"]
    after = (await probers.stats())["prober-1"]
    assert after["ffprobe_started"] == before["ffprobe_started"] == 1
    assert after["cache_hits"] == before["cache_hits"] + 1


async def test_dead_and_silent_sources_fail_within_the_deadline(stack, probers):
    await probers.start()
    # Nothing listens: refused (SRT gives up after its 3 s connect timeout) → 502.
    started = time.monotonic()
    r = await stream_info(stack, f"srt://127.0.0.1:{free_port('udp')}")
    elapsed = time.monotonic() - started
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "UPSTREAM_ERROR"
    assert r.json()["error"]["field"] == "stream_url"
    assert elapsed < 10 + 1

    # Bound but silent (UDP nobody sends to): the deadline → 504, within deadline + 1 s.
    for deadline in (2.0, None):
        started = time.monotonic()
        r = await stream_info(stack, f"udp://127.0.0.1:{free_port('udp')}", timeout=deadline)
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        limit = deadline or 10.0
        assert limit - 0.5 <= elapsed < limit + 1, elapsed


async def test_local_files_are_refused_before_ffprobe_runs(stack, probers):
    proc = await probers.start()
    for url in ("file:///etc/passwd", "/etc/passwd", "concat:/etc/passwd|/etc/hosts",
                "subfile,,start,0,end,0,,:/etc/passwd", "data:text/plain,hello"):  # fmt: skip
        r = await stream_info(stack, url)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["field"] == "stream_url"
        # The prober refuses it too when asked directly (the API is not the only caller).
        reply = await probers.nc.request(
            probers.subjects.probe(), ProbeRequest(url=url).model_dump_json().encode(), timeout=5
        )
        assert reply.headers[ERROR_CODE_HEADER] == "400", (url, reply.headers)
        assert json.loads(reply.data)["field"] == "stream_url"
        assert ffprobes(proc.pid) == 0
    assert (await probers.stats())["prober-1"]["ffprobe_started"] == 0


async def test_a_burst_of_20_gets_answers_or_clean_503s_within_the_limit(stack, probers):
    proc = await probers.start(REELHOUSE_PROBE_CONCURRENCY="2", REELHOUSE_PROBE_QUEUE="3")
    deadline = 2.0
    samples: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(ffprobes(proc.pid))
            await asyncio.sleep(0.02)

    async def one(url: str) -> tuple[int, float, Any]:
        started = time.monotonic()
        r = await stream_info(stack, url, timeout=deadline)
        return r.status_code, time.monotonic() - started, r

    sampler = asyncio.create_task(sample())
    urls = [f"udp://127.0.0.1:{free_port('udp')}" for _ in range(20)]
    results = await asyncio.wait_for(asyncio.gather(*(one(u) for u in urls)), deadline + 10)
    done.set()
    await sampler

    codes = [code for code, _, _ in results]
    assert set(codes) <= {503, 504}, codes
    assert codes.count(504) >= 2  # the ones that ran hit the deadline
    assert codes.count(503) >= 20 - 2 - 3  # beyond slots + queue: refused at once
    for code, elapsed, r in results:
        assert elapsed < deadline + 1, elapsed
        if code == 503:
            assert r.json()["error"]["code"] == "UNAVAILABLE"
            assert int(r.headers["Retry-After"]) >= 1
    assert max(samples) <= 2, samples
    assert max(samples) >= 1  # the sampler did see the probes
    stats = (await probers.stats())["prober-1"]
    assert stats["ffprobe_running"] == 0
    assert stats["waiting"] == 0
    assert stats["rejected"] == codes.count(503)
    await eventually(lambda: ffprobes(proc.pid) == 0, timeout=5, what="no ffprobe left")


async def test_a_monitored_stream_goes_offline_online_offline(
    stack, probers, db, media_source_factory
):
    source = await media_source_factory("srt", start=False)
    await probers.start()
    body = {**seed_payloads("streams-api.txt", "/api/streams/create")[0], "active": False}
    r = await streams(stack, "create", {**body, "stream_url": source.url})
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["stream_url"] == source.url
    assert row["status"] is None

    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(json.loads(msg.data))

    subject = probers.subjects.event("stream", row["id"], "stream_status")
    await probers.nc.subscribe(subject, cb=on_event)
    await probers.nc.flush()

    async def next_event(timeout: float = 20) -> dict[str, Any]:
        return await asyncio.wait_for(events.get(), timeout)

    started = await streams(stack, "start", {"id": row["id"]})
    assert started.status_code == 200
    assert started.json()["active"] is True
    offline = await next_event()
    assert (offline["type"], offline["module"], offline["state"]) == (
        "stream_status",
        "stream",
        "offline",
    )
    assert offline["job_id"] == row["id"]
    assert offline["node"] == "prober-1"
    assert offline["reason"]
    got = (await streams(stack, "getById", {"id": row["id"]})).json()
    assert got["status"]["state"] == "offline"
    assert got["status"]["since"] == offline["since"]

    await source.start()  # the publisher starts
    online = await next_event()
    assert online["state"] == "online"
    assert online["stream_meta_data"]["codec_name"] == "h264"
    got = (await streams(stack, "getById", {"id": row["id"]})).json()
    assert got["status"]["state"] == "online"
    assert got["status"]["since"] == online["since"]
    meta = got["stream_meta_data"]
    assert (meta["codec_name"], meta["resolution"], meta["fps"]) == ("h264", "640x360", "25/1")
    assert (meta["audio_codec_name"], meta["sample_rate"], meta["channels"]) == ("aac", "48000", 2)
    assert meta["channel_layout"] == "stereo"
    assert meta["format_name"] == "mpegts"

    await source.stop()  # the publisher stops
    assert (await next_event())["state"] == "offline"
    got = (await streams(stack, "getById", {"id": row["id"]})).json()
    assert got["status"]["state"] == "offline"
    assert got["stream_meta_data"] == meta  # the last inspection is kept

    stopped = await streams(stack, "stop", {"id": row["id"]})
    assert stopped.json()["status"] is None
    assert (await next_event())["state"] == "unmonitored"
    await eventually(
        lambda: db.streams.count_documents(
            {
                "_id": ObjectId(row["id"]),
                "status": {"$exists": False},
                "runtime": {"$exists": False},
            }
        ),
        timeout=10,
        what="status and lease cleared",
    )
    assert events.empty()


async def test_two_probers_never_monitor_one_stream_twice(stack, probers, db):
    first = await probers.start()
    await probers.start()
    preset = seed_payloads("streams-api.txt", "/api/streams/create")[0]
    ids = []
    for n in range(4):
        url = f"rtmp://127.0.0.1:{free_port()}/live/s{n}"  # refused at once: cheap probes
        r = await streams(stack, "create", {**preset, "name": f"s{n}", "stream_url": url})
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])

    async def monitored(expect: int) -> dict[str, set[str]]:
        stats = await probers.stats(expect=expect)
        return {node: set(data["monitoring"]) for node, data in stats.items()}

    async def all_claimed(nodes: int) -> bool:
        by_node = await monitored(nodes)
        return len(by_node) == nodes and set().union(*by_node.values()) == set(ids)

    await eventually(lambda: all_claimed(2), timeout=20, what="all streams monitored")
    deadline = time.monotonic() + 5  # more than one lease renewal (lease 3 s)
    while time.monotonic() < deadline:
        by_node = await monitored(2)
        a, b = by_node.get("prober-1", set()), by_node.get("prober-2", set())
        assert not a & b, by_node
        docs = await db.streams.find({}, {"runtime.node": 1}).to_list(None)
        for doc in docs:
            node = doc["runtime"]["node"]
            assert str(doc["_id"]) in by_node[node], (doc, by_node)
        await asyncio.sleep(0.3)
    statuses = await db.streams.distinct("status.state")
    assert statuses == ["offline"]

    await first.kill()  # SIGKILL: no release; prober-2 takes over after the lease
    await eventually(lambda: all_claimed(1), timeout=20, what="prober-2 monitors every stream")
    docs = await db.streams.find({}, {"runtime.node": 1}).to_list(None)
    assert {d["runtime"]["node"] for d in docs} == {"prober-2"}
