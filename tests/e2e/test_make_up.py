"""`make up`'s runner brings the whole stack up green and takes it all down on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from support.infra import ROOT, free_port
from support.wait import eventually

pytestmark = pytest.mark.slow


def _processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            blob = (pid_dir / "cmdline").read_bytes() + (pid_dir / "environ").read_bytes()
            state = (pid_dir / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker.encode() in blob and state != "Z":
            found.append(f"{pid_dir.name}: {(pid_dir / 'cmdline').read_bytes()[:120]!r}")
    return found


async def test_up_serves_health_and_stops_everything(tmp_path):
    data = tmp_path / "stack-data"
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOUSE_")}
    env.update(
        UP_DATA_DIR=str(data), API_PORT=str(api_port), NATS_PORT=str(free_port()),
        DB_PORT=str(free_port()), REELHOUSE_NODE_HEARTBEAT_S="1",
    )  # fmt: skip
    log = (tmp_path / "up.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts/up.sh"), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:

            async def green():
                r = await client.get("/api/health")
                return r if r.status_code == 200 else None

            r = await eventually(green, timeout=60, what="make up: /api/health 200", interval=0.5)
            assert all(c["status"] == "up" for c in r.json()["checks"].values())
            assert Path(r.json()["checks"]["storage"]["path"]) == data / "recordings"

            token = (data / "bootstrap-token").read_text().strip()

            async def five_services():
                r = await client.post("/api/nodes/getAll", headers={"x-access-token": token})
                alive = {n["service"] for n in r.json() if n["alive"]}
                return alive if len(alive) == 5 else None

            alive = await eventually(five_services, timeout=30, what="five services alive")
            assert alive == {"api", "recorder", "restreamer", "prober", "janitor"}
        # Log lines are prefixed with the process name.
        text = (tmp_path / "up.log").read_text(errors="replace")
        for name in ("nats.1", "db.1", "api.1", "recorder.1", "janitor.1"):
            assert f" {name} " in text or f" {name}  " in text or f"{name} |" in text, name
        assert _processes_mentioning(str(data))
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    leftovers = await eventually(
        lambda: not _processes_mentioning(str(data)) or None,
        timeout=10,
        what="no process of the stack left",
    )
    assert leftovers
    assert (data / "db").is_dir()
    assert (data / "nats").is_dir()
