"""Each of the services starts, registers and heartbeats into ``nodes``, and stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats
import nats.js.errors
import pytest
from support.infra import free_port
from support.services import running_service
from support.wait import eventually

from reelhouse.common.subjects import Subjects

SERVICES = ["api", "recorder", "restreamer", "prober", "janitor"]


async def _bucket(js, subjects: Subjects):
    try:
        return await js.key_value(subjects.live_bucket())
    except nats.js.errors.BucketNotFoundError:
        return None


async def _get(kv, key: str):
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry if entry.value else None


async def _newer(kv, key: str, than):
    entry = await _get(kv, key)
    return entry if entry is not None and entry.revision > than.revision else None


@pytest.mark.parametrize("service", SERVICES)
async def test_service_heartbeats_and_exits_cleanly_on_sigterm(
    service, service_env, settings_env, db, tmp_path
):
    env = {**service_env, "REELHOUSE_API_PORT": str(free_port())}
    nc = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    subjects = Subjects(settings_env["REELHOUSE_SUBJECT_PREFIX"])
    try:
        async with running_service(service, env, tmp_path) as proc:
            nodes = db["nodes"]
            row = await eventually(
                lambda: nodes.find_one({"service": service}), timeout=30, what=f"{service} row"
            )
            assert row["pid"] == proc.pid
            assert row["state"] == "running"
            assert row["host"]
            assert row["version"]
            assert row["_id"].startswith(f"{service}-")
            # The heartbeat is the live plane's: the node key, rewritten every 0.5 s with a TTL.
            js = nc.jetstream()
            kv = await eventually(lambda: _bucket(js, subjects), timeout=20, what="the bucket")
            key = subjects.live_node(service, row["_id"])
            first = await eventually(lambda: _get(kv, key), timeout=20, what="a heartbeat")
            second = await eventually(
                lambda: _newer(kv, key, first), timeout=10, what=f"{service} heartbeat"
            )
            beat = json.loads(second.value)
            assert beat["pid"] == proc.pid
            assert beat["node"] == row["_id"]
            # Job workers: max_jobs; the prober: max_monitors (streams it may monitor).
            expected_capacity = {"recorder": 40, "restreamer": 40, "prober": 50}.get(service, 0)
            assert beat["capacity"] == expected_capacity
            assert beat["running_jobs"] == 0

            code = await proc.terminate(timeout=20)
            assert code == 0, proc.output()[-2000:]
        # A clean stop deletes the node key at once (peers need not wait for the TTL).
        assert await _get(kv, key) is None
    finally:
        await nc.close()

    final = await nodes.find_one({"_id": row["_id"]})
    assert final["state"] == "stopped"
    assert final["stopped"] >= row["started"]

    # Logs are structured: every line is a JSON object with event, level, timestamp, service.
    lines = [ln for ln in proc.output().splitlines() if ln.strip()]
    events = []
    for line in lines:
        record = json.loads(line)
        assert {"event", "level", "timestamp"} <= record.keys(), line
        events.append(record["event"])
    assert "node_registered" in events
    assert "node_stopped" in events


async def test_bad_setting_stops_the_process_naming_the_variable(service_env, tmp_path):
    env = {**service_env, "REELHOUSE_NODE_HEARTBEAT_S": "often"}
    async with running_service("recorder", env, tmp_path) as proc:
        code = await proc.wait(timeout=20)
    assert code == 2
    out = proc.output()
    assert "REELHOUSE_NODE_HEARTBEAT_S" in out
    assert "often" in out


async def test_negative_capacity_is_refused(service_env, tmp_path):
    env = {**service_env, "REELHOUSE_MAX_JOBS": "0"}
    async with running_service("recorder", env, tmp_path) as proc:
        code = await proc.wait(timeout=20)
    assert code == 2
    assert "REELHOUSE_MAX_JOBS" in proc.output()


class _OldNatsServer:
    """A TCP listener that greets like nats-server 2.9.10 (Debian's) and answers PING: the one
    stand-in here, for a server version the pinned build can never be (docs/ARCHITECTURE.md §2 needs
    2.11's per-key TTLs)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> _OldNatsServer:
        info = {"server_id": "OLD", "version": "2.9.10", "proto": 1, "max_payload": 1 << 20,
                "host": "127.0.0.1", "port": self.port, "headers": True}  # fmt: skip

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"INFO {json.dumps(info)}\r\n".encode())
            await writer.drain()
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while line := await reader.readline():
                    if line.startswith(b"PING"):
                        writer.write(b"PONG\r\n")
                        await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("service", ["api", "recorder"])
async def test_a_nats_server_older_than_2_11_is_refused_naming_its_version(
    service, service_env, tmp_path
):
    async with _OldNatsServer() as old:
        env = {**service_env, "REELHOUSE_NATS_URL": f"nats://127.0.0.1:{old.port}",
               "REELHOUSE_API_PORT": str(free_port())}  # fmt: skip
        async with running_service(service, env, tmp_path) as proc:
            code = await proc.wait(timeout=30)
    assert code == 3, proc.output()[-2000:]
    out = proc.output()
    assert "nats_server_too_old" in out
    assert "2.9.10" in out
    assert "2.11" in out
