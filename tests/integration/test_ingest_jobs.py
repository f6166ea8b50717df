"""Jobs fed by the engine's own ingest servers (issue 21): ``INPUT_TYPE_SRT_SERVER`` and
``INPUT_TYPE_RTMP_SERVER``. One encoder's contribution is read by two recordings and a restream at
once through the ingest fan-out; a publisher gap shorter than the hold stays inside one part and
one file, and is reported. Real data plane, nats-server, FerretDB and FFmpeg.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.events import Events
from support.media import FfmpegProcess, MediaSpec, _ffmpeg_argv, ffprobe, free_port
from support.seeds import restream_payload
from support.stack import Stack, running_stack
from support.wait import eventually
from test_recording_jobs import job_body, out_time_s, stat_of, stop_and_wait, wait_recorded

from reelhouse.common.mongo import Collections

GAP_HOLD_S = "12"
"""Long enough that a publisher killed for 3 s (and an encoder's restart) stays within it."""


def ingest_env(service_env: dict[str, str]) -> dict[str, str]:
    srt, rtmp = free_port("udp"), free_port("tcp")
    return {
        **service_env,
        "REELHOUSE_INGEST_SRT_PORTS": f"{srt}-{srt}",
        "REELHOUSE_INGEST_RTMP_PORTS": f"{rtmp}-{rtmp}",
        "REELHOUSE_INGEST_FANOUT_PORT": str(free_port("udp")),
        "REELHOUSE_INGEST_PUBLIC_HOST": "127.0.0.1",
        "REELHOUSE_INGEST_GAP_HOLD_S": GAP_HOLD_S,  # the ingest service and the workers read it
    }


def port_of(env: dict[str, str], proto: str) -> int:
    return int(env[f"REELHOUSE_INGEST_{proto.upper()}_PORTS"].split("-")[0])


def encoder(url: str, fmt: str = "mpegts") -> FfmpegProcess:
    spec = MediaSpec.of("320x180")
    return FfmpegProcess(_ffmpeg_argv(*spec.source_args(), "-f", fmt, url), name="encoder")


def ingest_input(server_id: str, row_id: str, proto: str = "SRT") -> dict[str, Any]:
    return {"input_type": f"INPUT_TYPE_{proto}_SERVER", "input_module_id": server_id,
            "input_stream_id": row_id}  # fmt: skip


def recording(index: int, server_id: str, row_id: str, proto: str = "SRT") -> dict[str, Any]:
    body = job_body("", index, recording_name=f"ingest {proto.lower()} {index}")
    body["input"] = {**body["input"], **ingest_input(server_id, row_id, proto)}
    del body["input"]["input_stream_url"]  # optional for ingest inputs
    return body


def of(events: Events, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.received if e.get("job_id") == job_id and e["type"] == kind]


async def runtime(stack: Stack, module: str, job_id: str) -> dict[str, Any]:
    return (await stack.api_ok(f"{module}/getById", {"id": job_id}))["runtime"] or {}


async def server_listening(stack: Stack, module: str, server_id: str) -> None:
    async def listening() -> bool:
        got = await stack.api_ok(f"{module}/getById", {"id": server_id})
        return (got["status"] or {}).get("state") == "listening"

    await eventually(listening, timeout=20, what=f"the {module} server to listen")


async def make_server(stack: Stack, proto: str, row: dict[str, Any]) -> tuple[str, dict]:
    module = f"{proto}-servers"
    server = await stack.api_ok(
        f"{module}/create",
        {"server_name": f"{proto} in", "server_port": port_of(stack.env, proto), "active": True},
    )
    made = await stack.api_ok("streams/create", {
        **row, "entity_id": server["id"], "active": True,
        "module_name": f"MODULE_{proto.upper()}_SERVERS"})  # fmt: skip
    await server_listening(stack, module, server["id"])
    return server["id"], made


@pytest.mark.slow
async def test_one_srt_contribution_feeds_two_recordings_and_a_restream_through_a_publisher_gap(
    service_env, tmp_path: Path, db
):
    env = ingest_env(service_env)
    async with (
        running_stack(env, tmp_path) as stack,
        Events(env["REELHOUSE_NATS_URL"], env["REELHOUSE_SUBJECT_PREFIX"]) as ev,
    ):
        await stack.start_ingest(REELHOUSE_INGEST_GAP_HOLD_S=GAP_HOLD_S)
        await stack.start_recorder()
        await stack.start_restreamer()
        sid, row = await make_server(
            stack,
            "srt",
            {"name": "main", "role_name": "publisher", "stream_id": "publisher/main-stage/cam"},
        )
        # The restream's destination: the engine's own RTMP server, as a platform would be.
        out_sid, out_row = await make_server(stack, "rtmp", {
            "name": "out", "role_name": "publisher", "stream_id": "live/out"})  # fmt: skip

        # Jobs made and started before anyone publishes: they wait, FFmpeg not started.
        recs = [(await stack.ok("create", recording(i, sid, row["id"])))["id"] for i in (0, 1)]
        restream = restream_payload(0, active=True, restream_name="ingest to rtmp")
        restream["input"] = {**restream["input"], **ingest_input(sid, row["id"])}
        restream["input"].pop("input_stream_url", None)
        restream["output"] = {**restream["output"], "output_type": "OUTPUT_TYPE_OTHER_RTMP_URL",
                              "output_stream_url": out_row["publish_url"]}  # fmt: skip
        rs = (await stack.api_ok("restream/create", restream))["id"]
        for module, job_id in [("recording", recs[0]), ("recording", recs[1]), ("restream", rs)]:
            await eventually(
                lambda m=module, j=job_id: _state_is(stack, m, j, "waiting"), timeout=20,
                what=f"{module} {job_id} waiting for the publisher",
            )  # fmt: skip

        enc = await encoder(row["publish_url"]).start()
        try:
            for job_id in recs:
                await wait_recorded(stack, job_id, 3.0)
            # The restream reached the RTMP server: its contribution is up there.
            await eventually(lambda: of(ev, out_sid, "publisher_up"), timeout=30,
                             what="the restream publishing to the RTMP server")  # fmt: skip

            # One contribution, three readers.
            async def three_readers() -> bool:
                rows = await stack.api_ok("srt-servers/getStat", {"id": sid})
                return any(r["role"] == "publish" and r["readers"] == 3 for r in rows)

            await eventually(three_readers, timeout=15, what="getStat readers == 3")
            pids = {j: (await runtime(stack, "recording", j))["pid"] for j in recs}
            rs_pid = (await runtime(stack, "restream", rs))["pid"]
            before = {j: await out_time_s(stack, j) for j in recs}

            # The publisher dies for 3 s and comes back.
            os.kill(enc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await enc.wait()
            await asyncio.sleep(3.0)  # the gap itself, not a wait for a condition
            enc = await encoder(row["publish_url"]).start()
            # A killed SRT caller is noticed only by the peer-idle timeout: the encoder is back
            # either after that (publisher_back) or before, taking over its own silent
            # connection (publisher_replaced). Either way the readers saw one gap.
            back = await eventually(
                lambda: of(ev, sid, "publisher_back") + of(ev, sid, "publisher_replaced"),
                timeout=15, what="publisher_back or publisher_replaced",
            )  # fmt: skip
            assert (back[0].get("gap_ms") or back[0].get("idle_ms") or 0) >= 2500, back
            for job_id in recs:
                await wait_recorded(stack, job_id, before[job_id] + 4.0)

            # getStat shows the gap on the contribution's connections.
            async def gap_counted() -> dict[str, Any] | None:
                rows = await stack.api_ok("srt-servers/getStat", {"id": sid})
                found = [r for r in rows if r["role"] == "publish" and r["gaps"] >= 1]
                return found[0] if found else None

            row_now = await eventually(gap_counted, timeout=10, what="the gap in getStat")
            assert row_now["gap_ms_total"] >= 2500, row_now
            assert row_now["held"] is False
            # The jobs kept running: the same FFmpeg, no restart, no job_retrying.
            for job_id in recs:
                rt = await runtime(stack, "recording", job_id)
                assert rt["state"] == "running", rt
                assert rt["pid"] == pids[job_id], rt
                assert not of(ev, job_id, "job_retrying")
            rt = await runtime(stack, "restream", rs)
            assert rt["state"] == "running", rt
            assert rt["pid"] == rs_pid, rt
            assert not of(ev, rs, "job_retrying")
            assert len(of(ev, out_sid, "publisher_up")) == 1  # the RTMP push never broke

            # Each recording is one file, whose media is the run less the gap, gap reported.
            for job_id in recs:
                (joined,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
                assert joined["status"] == "ready"
                stored = await db[Collections.FILES].find_one({"entity_id": job_id})
                report = stored["integrity"]
                assert report["parts"] == 1, report
                gaps = [g for g in report["gaps"] if g["cause"] == "publisher_gap"]
                assert len(gaps) == 1, (report, stored)
                (gap,) = gaps
                assert gap["duration_ms"] >= 2500, gap
                # The wall clock from FFmpeg's start is the media and the gap (and the probe).
                missing = report["expected_ms"] - report["duration_ms"]
                assert -1500 <= missing - gap["duration_ms"] <= 3500, report
                info = await ffprobe(stored["file_path"], analyzeduration=5.0)
                kinds = {s["codec_type"] for s in info["streams"]}
                assert kinds == {"video", "audio"}, info
                assert float(info["format"]["duration"]) >= 6.0
            await stack.api_ok("restream/stop", {"id": rs})
        finally:
            await enc.stop()


async def _state_is(stack: Stack, module: str, job_id: str, state: str) -> bool:
    return (await runtime(stack, module, job_id)).get("state") == state


@pytest.mark.slow
async def test_an_rtmp_contribution_is_recorded_through_the_fan_out_across_a_reconnect(
    service_env, tmp_path, db
):
    """RTMP: the encoder's connection drops for 3 s and comes back (RTMP timestamps restart at
    zero); the recording stays one FFmpeg run and one file, with the gap reported."""
    env = ingest_env(service_env)
    async with (
        running_stack(env, tmp_path) as stack,
        Events(env["REELHOUSE_NATS_URL"], env["REELHOUSE_SUBJECT_PREFIX"]) as ev,
    ):
        await stack.start_ingest(REELHOUSE_INGEST_GAP_HOLD_S=GAP_HOLD_S)
        await stack.start_recorder()
        sid, row = await make_server(stack, "rtmp", {
            "name": "program", "role_name": "publisher", "stream_id": "live/program",
            "passphrase": "stream-key-1234"})  # fmt: skip
        job_id = (await stack.ok("create", recording(0, sid, row["id"], "RTMP")))["id"]
        enc = await encoder(row["publish_url"], "flv").start()
        try:
            await wait_recorded(stack, job_id, 3.0)
            stat = await stat_of(stack, job_id)
            assert stat is not None
            assert float(stat["fps"] or 0) > 0, stat
            pid = (await runtime(stack, "recording", job_id))["pid"]
            before = await out_time_s(stack, job_id)
            os.kill(enc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await enc.wait()
            await eventually(lambda: of(ev, sid, "publisher_lost"), timeout=10,
                             what="publisher_lost (TCP notices at once)")  # fmt: skip
            await asyncio.sleep(3.0)  # the gap itself
            enc = await encoder(row["publish_url"], "flv").start()
            (back,) = await eventually(lambda: of(ev, sid, "publisher_back"), timeout=15,
                                       what="publisher_back")  # fmt: skip
            assert back["gap_ms"] >= 3000, back
            await wait_recorded(stack, job_id, before + 3.0)
            rt = await runtime(stack, "recording", job_id)
            assert rt["state"] == "running", rt
            assert rt["pid"] == pid, rt
            (joined,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
            assert joined["status"] == "ready"
            stored = await db[Collections.FILES].find_one({"entity_id": job_id})
            (gap,) = [g for g in stored["integrity"]["gaps"] if g["cause"] == "publisher_gap"]
            assert gap["duration_ms"] >= 3000, stored["integrity"]
            info = await ffprobe(stored["file_path"], analyzeduration=5.0)
            assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
            assert float(info["format"]["duration"]) >= before + 2.5
        finally:
            await enc.stop()


async def test_an_ingest_input_must_name_a_server_and_a_publisher_row_on_it(
    service_env, tmp_path, db
):
    """Bad ingest inputs: a 400 naming the field, and nothing stored."""
    async with running_stack(ingest_env(service_env), tmp_path) as stack:
        server = await stack.api_ok("srt-servers/create", {
            "server_name": "in", "server_port": port_of(stack.env, "srt")})  # fmt: skip
        receiver = await stack.api_ok("streams/create", {
            "name": "rx", "role_name": "receiver", "stream_id": "receiver/x",
            "entity_id": server["id"], "module_name": "MODULE_SRT_SERVERS"})  # fmt: skip
        publisher = await stack.api_ok("streams/create", {
            "name": "tx", "role_name": "publisher", "stream_id": "publisher/x",
            "entity_id": server["id"], "module_name": "MODULE_SRT_SERVERS"})  # fmt: skip
        nobody = "0123456789abcdef01234567"
        cases = [
            ({"input_module_id": ""}, "input.input_module_id"),
            ({"input_stream_id": "nope"}, "input.input_stream_id"),
            ({"input_module_id": nobody}, "input.input_module_id"),
            ({"input_stream_id": nobody}, "input.input_stream_id"),
            ({"input_stream_id": receiver["id"]}, "input.input_stream_id"),
            ({"input_type": "INPUT_TYPE_RTMP_SERVER"}, "input.input_module_id"),
        ]
        for change, field in cases:
            body = recording(0, server["id"], publisher["id"])
            body["input"].update(change)
            r = await stack.call("create", body)
            assert r.status_code == 400, (change, r.text)
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_ERROR"
            assert error["field"] == field, (change, error)
        assert await db[Collections.RECORDINGS].count_documents({}) == 0
        assert await db[Collections.INPUTS].count_documents({}) == 0
        # A URL type still needs its URL.
        body = recording(0, server["id"], publisher["id"])
        body["input"]["input_type"] = "INPUT_TYPE_SRT_URL"
        r = await stack.call("create", body)
        assert r.status_code == 400
        assert r.json()["error"]["field"] == "input.input_stream_url"
        # The right one is stored, inactive here, with no URL of its own.
        body = recording(0, server["id"], publisher["id"])
        body["active"] = False
        made = await stack.ok("getById", {"id": (await stack.ok("create", body))["id"]})
        (stored,) = made["input"]  # the seed's getById lists the linked inputs
        assert stored["input_type"] == "INPUT_TYPE_SRT_SERVER"
        assert stored["input_module_id"] == server["id"]
        assert stored["input_stream_url"] == ""
