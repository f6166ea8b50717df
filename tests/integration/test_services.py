"""Each of the five services starts, registers and heartbeats into ``nodes``, and stops cleanly."""

from __future__ import annotations

import json

import pytest
from support.infra import free_port
from support.services import running_service
from support.wait import eventually

SERVICES = ["api", "recorder", "restreamer", "prober", "janitor"]


@pytest.mark.parametrize("service", SERVICES)
async def test_service_heartbeats_and_exits_cleanly_on_sigterm(service, service_env, db, tmp_path):
    env = {**service_env, "REELHOUSE_API_PORT": str(free_port())}
    async with running_service(service, env, tmp_path) as proc:
        nodes = db["nodes"]
        first = await eventually(
            lambda: nodes.find_one({"service": service}), timeout=30, what=f"{service} row"
        )
        # A second heartbeat moves last_seen forward: the node is alive, not just registered.
        second = await eventually(
            lambda: nodes.find_one({"_id": first["_id"], "last_seen": {"$gt": first["last_seen"]}}),
            timeout=10,
            what=f"{service} heartbeat",
        )
        assert second["pid"] == proc.pid
        assert second["state"] == "running"
        assert second["host"]
        assert second["version"]
        assert second["started"] <= second["last_seen"]
        assert second["_id"].startswith(f"{service}-")
        # Job workers: max_jobs; the prober: max_monitors (streams it may monitor).
        expected_capacity = {"recorder": 40, "restreamer": 40, "prober": 50}.get(service, 0)
        assert second["capacity"] == expected_capacity
        assert second["running_jobs"] == 0

        code = await proc.terminate(timeout=20)
        assert code == 0, proc.output()[-2000:]

    final = await nodes.find_one({"_id": first["_id"]})
    assert final["state"] == "stopped"
    assert final["stopped"] >= second["last_seen"]

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
