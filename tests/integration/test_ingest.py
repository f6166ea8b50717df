"""Ingest (issue 21): the SRT and RTMP server modules, stream rows on them, and the whole path
with the real data plane (``.cache/bin/reelhouse-ingest``), real nats-server, FerretDB and
FFmpeg encoders and readers.

Each end-to-end test shares one publisher among its checks (stats, fan-out, refusals) to stay
within the issue's test-time budget.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from support.events import Events
from support.media import FfmpegProcess, MediaSpec, _ffmpeg_argv, free_port, port_in_use
from support.stack import Stack, running_stack
from support.wait import eventually

from reelhouse.common.ingest import read_contribution

SRT_PASS = "server-pass-123"


def ingest_env(service_env: dict[str, str]) -> dict[str, str]:
    """This test's own port ranges (one free port each) and fan-out port."""
    srt = free_port("udp")
    rtmp = free_port("tcp")
    return {
        **service_env,
        "REELHOUSE_INGEST_SRT_PORTS": f"{srt}-{srt}",
        "REELHOUSE_INGEST_RTMP_PORTS": f"{rtmp}-{rtmp}",
        "REELHOUSE_INGEST_FANOUT_PORT": str(free_port("udp")),
        "REELHOUSE_INGEST_PUBLIC_HOST": "127.0.0.1",
    }


def first_port(env: dict[str, str], proto: str) -> int:
    return int(env[f"REELHOUSE_INGEST_{proto.upper()}_PORTS"].split("-")[0])


@pytest.fixture
async def stack(service_env: dict[str, str], tmp_path: Path, db):
    async with running_stack(ingest_env(service_env), tmp_path) as stack:
        yield stack


async def error_of(stack: Stack, path: str, body: Any, status: int = 400) -> dict[str, Any]:
    r = await stack.api(path, body)
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()["error"]


# -- the API alone ---------------------------------------------------------------------------


async def test_server_modules_validate_ports_passphrases_and_the_rows_on_them(stack: Stack):
    srt_port, rtmp_port = first_port(stack.env, "srt"), first_port(stack.env, "rtmp")
    srt_range = stack.env["REELHOUSE_INGEST_SRT_PORTS"]

    # A port outside the range: a validation error that names the range and the setting.
    err = await error_of(stack, "srt-servers/create",
                         {"server_name": "out", "server_port": srt_port + 1})  # fmt: skip
    assert err["code"] == "VALIDATION_ERROR"
    assert err["field"] == "server_port"
    assert srt_range in err["message"]
    assert "REELHOUSE_INGEST_SRT_PORTS" in err["message"]
    # SRT passphrases are 10 to 79 characters.
    for bad in ("short", "x" * 80):
        err = await error_of(stack, "srt-servers/create", {"server_name": "p", "server_port":
                             srt_port, "server_passphrase": bad})  # fmt: skip
        assert err["field"] == "server_passphrase", err

    server = await stack.api_ok("srt-servers/create", {"server_name": "Main", "server_port":
                                srt_port, "server_passphrase": SRT_PASS})  # fmt: skip
    assert server["server_latency"] == 120
    assert server["active"] is False
    assert server["status"] is None
    assert await stack.api_ok("srt-servers/getById", {"id": server["id"]}) == server
    # (the Streams seed's server is there too: tests/support/seeds.py)
    assert (await stack.api_ok("srt-servers/getCount", {"filter": {"server_name": "Main"}})) == {
        "count": 1
    }
    # The port is taken.
    err = await error_of(stack, "srt-servers/create",
                         {"server_name": "twin", "server_port": srt_port}, 409)  # fmt: skip
    assert err["code"] == "CONFLICT"
    assert err["field"] == "server_port"

    # Stream rows must sit on an existing server of their module.
    row = {"name": "cam", "role_name": "publisher", "stream_id": "publisher/main-stage/cam",
           "entity_id": "0123456789abcdef01234567", "module_name": "MODULE_SRT_SERVERS",
           "active": True}  # fmt: skip
    err = await error_of(stack, "streams/create", row)
    assert err["field"] == "entity_id"
    err = await error_of(stack, "streams/create", {**row, "entity_id": server["id"],
                         "module_name": "MODULE_RTMP_SERVERS"})  # fmt: skip
    assert err["field"] == "entity_id"
    err = await error_of(stack, "streams/create",
                         {**row, "entity_id": server["id"], "passphrase": "tiny"})  # fmt: skip
    assert err["field"] == "passphrase"
    made = await stack.api_ok("streams/create", {**row, "entity_id": server["id"]})
    assert made["publish_url"] == (
        f"srt://127.0.0.1:{srt_port}?streamid=publisher/main-stage/cam&passphrase={SRT_PASS}"
    )
    assert made["read_url"] == (
        f"srt://127.0.0.1:{srt_port}?streamid=receiver/main-stage/cam&passphrase={SRT_PASS}"
        "&latency=120000"
    )
    started = await stack.api_ok("streams/start", {"id": made["id"]})
    assert started["publish_url"] == made["publish_url"]

    rtmp = await stack.api_ok("rtmp-servers/create",
                              {"server_name": "RTMP", "server_port": rtmp_port})  # fmt: skip
    err = await error_of(stack, "rtmp-servers/update", {"id": rtmp["id"], "server_port": 80})
    assert err["field"] == "server_port"
    program = await stack.api_ok("streams/create", {
        "name": "program", "role_name": "publisher", "stream_id": "live/program",
        "entity_id": rtmp["id"], "module_name": "MODULE_RTMP_SERVERS",
        "passphrase": "stream-key-1234"})  # fmt: skip
    assert (
        program["publish_url"] == f"rtmp://127.0.0.1:{rtmp_port}/live/program?key=stream-key-1234"
    )
    fanout = stack.env["REELHOUSE_INGEST_FANOUT_PORT"]
    assert program["read_url"] == (
        f"srt://127.0.0.1:{fanout}?streamid=read/{rtmp['id']}/live/program&latency=120000"
    )
    # Nothing is live: getStat is empty, and an unknown id is a 404.
    assert await stack.api_ok("rtmp-servers/getStat", {}) == []
    await error_of(stack, "srt-servers/getStat", {"id": "0123456789abcdef01234567"}, 404)
    # Remove: gone.
    assert (await stack.api("rtmp-servers/remove", {"id": rtmp["id"]}, verb="DELETE")).json() == {
        "success": True
    }
    await error_of(stack, "rtmp-servers/getById", {"id": rtmp["id"]}, 404)


# -- end to end with the real data plane -----------------------------------------------------


def publisher(url: str, fmt: str = "mpegts", spec: MediaSpec | None = None) -> FfmpegProcess:
    spec = spec or MediaSpec.of("320x180")
    return FfmpegProcess(_ffmpeg_argv(*spec.source_args(), "-f", fmt, url), name="encoder")


def events_of(events: Events, server_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.received if e.get("job_id") == server_id and e["type"] == kind]


async def stat_rows(stack: Stack, module: str, server_id: str) -> list[dict[str, Any]]:
    return await stack.api_ok(f"{module}/getStat", {"id": server_id})


@pytest.mark.slow
async def test_srt_publisher_is_fanned_out_measured_and_refusals_say_why(stack: Stack):
    port = first_port(stack.env, "srt")
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        await stack.start_ingest()
        body = {"server_name": "Main", "server_port": port, "server_passphrase": SRT_PASS,
                "active": True}  # fmt: skip
        server = await stack.api_ok("srt-servers/create", body)
        sid = server["id"]
        rows = {}
        for name in ("main-stage/cam", "main-stage/other"):
            rows[name] = await stack.api_ok("streams/create", {
                "name": name, "role_name": "publisher", "stream_id": f"publisher/{name}",
                "entity_id": sid, "module_name": "MODULE_SRT_SERVERS", "active": True})  # fmt: skip

        async def listening() -> bool:
            got = await stack.api_ok("srt-servers/getById", {"id": sid})
            return (got["status"] or {}).get("state") == "listening"

        await eventually(listening, timeout=20, what="the SRT server to listen")

        encoder = await publisher(rows["main-stage/cam"]["publish_url"]).start()
        readers: list[FfmpegProcess] = []
        refused: list[FfmpegProcess] = []
        try:
            await eventually(lambda: events_of(ev, sid, "publisher_up"), timeout=20,
                             what="publisher_up")  # fmt: skip
            up = events_of(ev, sid, "publisher_up")[0]
            assert up["name"] == "main-stage/cam"
            assert up["module"] == "ingest"
            assert up["tenant"] == "default"

            # getStat: the SRT numbers, moving.
            async def publish_row() -> dict[str, Any] | None:
                found = [r for r in await stat_rows(stack, "srt-servers", sid)
                         if r["role"] == "publish" and r["bytes"] > 0]  # fmt: skip
                return found[0] if found else None

            first = await eventually(publish_row, timeout=15, what="a publish row in getStat")
            assert first["server_id"] == sid
            assert first["stream_id"] == "main-stage/cam"
            assert first["remote_address"].startswith("127.0.0.1:")
            for field in ("rtt_ms", "recv_rate_kbits", "link_capacity_kbits", "pkt_recv_loss",
                          "pkt_retrans", "pkt_recv_drop", "recv_buffer_ms", "latency_ms",
                          "connected_at", "send_rate_kbits"):  # fmt: skip
                assert first[field] is not None, field
            assert first["latency_ms"] >= 100
            await eventually(
                lambda: _moved(stack, sid, first["bytes"]), timeout=10, what="bytes to grow"
            )

            # Fan-out: two jobs-to-be read the one contribution from the fan-out listener.
            live = stack.client.app.state.reelhouse.live  # type: ignore[attr-defined]
            contribution = await eventually(
                lambda: read_contribution(live, sid, "main-stage/cam"), timeout=10,
                what="the contribution's live-plane key",
            )  # fmt: skip
            assert contribution.publisher is True
            assert contribution.fanout.endswith(":" + stack.env["REELHOUSE_INGEST_FANOUT_PORT"])
            url = contribution.reader_url()
            for n in range(2):
                readers.append(await FfmpegProcess(
                    _ffmpeg_argv("-i", url, "-c", "copy", "-f", "null", "-"), name=f"reader{n}"
                ).start())  # fmt: skip
            await eventually(lambda: all(r.frames > 25 for r in readers), timeout=20,
                             what="both fan-out readers to get frames")  # fmt: skip

            async def two_readers() -> bool:
                row = await publish_row()
                return row is not None and row["readers"] == 2

            await eventually(two_readers, timeout=10, what="getStat readers == 2")

            # Prometheus: the same numbers, labelled by server and stream id.
            metrics = (await stack.client.get("/metrics")).text
            assert re.search(
                rf'reelhouse_ingest_readers\{{proto="srt",server_id="{sid}",'
                r'stream_id="main-stage/cam"\} 2\.0', metrics
            ), metrics[-2000:]  # fmt: skip
            assert f'reelhouse_ingest_srt_rtt_ms{{server_id="{sid}"' in metrics

            # Refusals, each with its reason: a wrong passphrase, an unknown stream id, and a
            # second publisher on the live name.
            other = rows["main-stage/other"]["publish_url"].replace(SRT_PASS, "wrong-pass-1234")
            unknown = rows["main-stage/other"]["publish_url"].replace("other", "nobody")
            double = rows["main-stage/cam"]["publish_url"]
            for url in (other, unknown, double):
                refused.append(await publisher(url).start())

            def reasons() -> set[str]:
                return {e.get("reason") for e in events_of(ev, sid, "ingest_refused")}

            want = {"bad_passphrase", "unknown_stream", "duplicate"}
            await eventually(lambda: want <= reasons(), timeout=20,
                             what=f"ingest_refused with {want}")  # fmt: skip
            names = {e["reason"]: e for e in events_of(ev, sid, "ingest_refused")}
            assert "nobody" in names["unknown_stream"]["stream_id"]
            assert names["duplicate"]["name"] == "main-stage/cam"
            # The refused encoders give up; the first publisher is untouched.
            await eventually(lambda: all(not p.is_running for p in refused), timeout=20,
                             what="the refused encoders to exit")  # fmt: skip
            assert encoder.is_running
            assert len(events_of(ev, sid, "publisher_up")) == 1
        finally:
            for proc in [*refused, *readers, encoder]:
                await proc.stop()


async def _moved(stack: Stack, sid: str, before: int) -> bool:
    rows = await stat_rows(stack, "srt-servers", sid)
    return any(r["role"] == "publish" and r["bytes"] > before for r in rows)


@pytest.mark.slow
async def test_rtmp_publisher_with_key_and_a_wrong_key(stack: Stack):
    port = first_port(stack.env, "rtmp")
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        await stack.start_ingest()
        body = {"server_name": "RTMP", "server_port": port, "active": True}
        server = await stack.api_ok("rtmp-servers/create", body)
        sid = server["id"]
        row = await stack.api_ok("streams/create", {
            "name": "program", "role_name": "publisher", "stream_id": "live/program",
            "entity_id": sid, "module_name": "MODULE_RTMP_SERVERS", "active": True,
            "passphrase": "stream-key-1234"})  # fmt: skip

        async def listening() -> bool:
            got = await stack.api_ok("rtmp-servers/getById", {"id": sid})
            return (got["status"] or {}).get("state") == "listening"

        await eventually(listening, timeout=20, what="the RTMP server to listen")
        wrong = await publisher(row["publish_url"].replace("1234", "9999"), "flv").start()
        await eventually(lambda: events_of(ev, sid, "ingest_refused"), timeout=20,
                         what="the wrong key refused")  # fmt: skip
        assert events_of(ev, sid, "ingest_refused")[0]["reason"] == "bad_passphrase"
        await wrong.stop()
        encoder = await publisher(row["publish_url"], "flv").start()
        try:
            await eventually(lambda: events_of(ev, sid, "publisher_up"), timeout=20,
                             what="publisher_up")  # fmt: skip
            assert events_of(ev, sid, "publisher_up")[0]["name"] == "live/program"

            async def sending() -> dict[str, Any] | None:
                rows = [r for r in await stat_rows(stack, "rtmp-servers", sid)
                        if r["role"] == "publish" and r["bytes"] > 0]  # fmt: skip
                return rows[0] if rows else None

            first = await eventually(sending, timeout=15, what="an RTMP publish row in getStat")
            assert first["stream_id"] == "live/program"
            assert "rtt_ms" not in first  # RTMP rows: bytes, bitrate, readers

            async def grew() -> bool:
                row = await sending()
                return (
                    row is not None and row["bytes"] > first["bytes"] and row["bitrate_kbits"] > 0
                )

            await eventually(grew, timeout=10, what="RTMP bytes to grow")

            # Stopping the server ends its live contribution, and says so.
            await stack.api_ok("rtmp-servers/stop", {"id": sid})
            (ended,) = await eventually(lambda: events_of(ev, sid, "contribution_ended"),
                                        timeout=15, what="contribution_ended")  # fmt: skip
            assert ended["name"] == "live/program"
            assert ended["reason"] == "closed"
        finally:
            await encoder.stop()


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
async def test_a_crashed_data_plane_is_restarted_and_its_servers_reopened(stack: Stack):
    port = first_port(stack.env, "srt")
    ingest = await stack.start_ingest()
    body = {"server_name": "Main", "server_port": port, "active": True}
    await stack.api_ok("srt-servers/create", body)

    def dataplane_on_port() -> int | None:
        for child in children(ingest.pid):
            if port_in_use(port, "udp", pid=child):
                return child
        return None

    first = await eventually(dataplane_on_port, timeout=20, what="the data plane on the port")
    os.kill(first, signal.SIGKILL)
    second = await eventually(
        lambda: (pid := dataplane_on_port()) and pid != first and pid, timeout=20,
        what="a new data plane on the port",
    )  # fmt: skip
    assert second != first
    assert ingest.proc is not None
    assert ingest.proc.returncode is None  # the service itself kept running
    assert "dataplane_crashed" in ingest.output()
