"""A Reelhouse stack for a test: the API in-process, recorders as real subprocesses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from reelhouse.api.settings import ApiSettings
from support.infra import free_port
from support.services import ServiceProcess, api_client, settings_from_env

TOKEN = "test-bootstrap-token-0123456789"
HEADERS = {"x-access-token": TOKEN}

FAST_RECORDER = {
    "REELHOUSE_LEASE_S": "3",
    "REELHOUSE_RECONCILE_S": "0.5",
    "REELHOUSE_RETRY_INITIAL_S": "0.5",
    "REELHOUSE_RETRY_MAX_S": "2",
    "REELHOUSE_STALE_TIMEOUT_S": "10",
    "REELHOUSE_STOP_GRACE_S": "5",
}
"""Recorder settings that keep failover and reconnects within a test's patience."""

DATAPLANE = Path(__file__).resolve().parents[2] / ".cache" / "bin" / "reelhouse-ingest"
"""The ingest data plane as ``make install`` builds it."""

FAST_INGEST = {
    "REELHOUSE_INGEST_DATAPLANE_PATH": str(DATAPLANE),
    "REELHOUSE_INGEST_GAP_HOLD_S": "3",
    "REELHOUSE_INGEST_TAKEOVER_IDLE_S": "1",
    "REELHOUSE_INGEST_RECONCILE_S": "2",
    "REELHOUSE_INGEST_ROWS_CACHE_S": "1",
    "REELHOUSE_INGEST_RETRY_INITIAL_S": "0.2",
    "REELHOUSE_INGEST_RETRY_MAX_S": "1",
}
"""Ingest settings for tests (ports and the fan-out port are the test's own)."""


@dataclass
class Stack:
    client: httpx.AsyncClient
    env: dict[str, str]
    tmp: Path
    recorders: list[ServiceProcess] = field(default_factory=list)
    restreamers: list[ServiceProcess] = field(default_factory=list)
    janitors: list[ServiceProcess] = field(default_factory=list)
    ingests: list[ServiceProcess] = field(default_factory=list)

    async def call(self, method: str, body: Any = None, *, verb: str = "POST") -> httpx.Response:
        """``/api/recording/<method>`` with the token."""
        return await self.client.request(
            verb, f"/api/recording/{method}", json=body, headers=HEADERS
        )

    async def ok(self, method: str, body: Any = None, *, verb: str = "POST") -> Any:
        r = await self.call(method, body, verb=verb)
        assert r.status_code == 200, (method, r.status_code, r.text)
        return r.json()

    async def start_recorder(self, **env: str) -> ServiceProcess:
        """A recorder subprocess on this test's infrastructure."""
        n = len(self.recorders) + 1
        proc = ServiceProcess(
            "recorder",
            {**self.env, **FAST_RECORDER, "REELHOUSE_NODE_ID": f"recorder-{n}", **env},
            self.tmp / f"recorder-{n}.log",
        )
        await proc.start()
        self.recorders.append(proc)
        return proc

    async def start_restreamer(self, **env: str) -> ServiceProcess:
        """A restreamer subprocess on this test's infrastructure."""
        n = len(self.restreamers) + 1
        proc = ServiceProcess(
            "restreamer",
            {**self.env, **FAST_RECORDER, "REELHOUSE_NODE_ID": f"restreamer-{n}", **env},
            self.tmp / f"restreamer-{n}.log",
        )
        await proc.start()
        self.restreamers.append(proc)
        return proc

    async def start_janitor(self, **env: str) -> ServiceProcess:
        """A janitor subprocess on this test's infrastructure."""
        n = len(self.janitors) + 1
        proc = ServiceProcess(
            "janitor",
            {**self.env, "REELHOUSE_NODE_ID": f"janitor-{n}", **env},
            self.tmp / f"janitor-{n}.log",
        )
        await proc.start()
        self.janitors.append(proc)
        return proc

    async def start_ingest(self, **env: str) -> ServiceProcess:
        """An ingest service subprocess (it runs the real data plane, .cache/bin/reelhouse-ingest)
        on this test's infrastructure, with fast timings (``env`` overrides)."""
        n = len(self.ingests) + 1
        # The relay server binds its port at start: the test's own, as stacks run side by side.
        relay = {"REELHOUSE_INGEST_RELAY_PORT": str(free_port("udp"))}
        proc = ServiceProcess(
            "ingest",
            {**relay, **self.env, **FAST_INGEST, "REELHOUSE_NODE_ID": f"ingest-{n}", **env},
            self.tmp / f"ingest-{n}.log",
        )
        await proc.start()
        self.ingests.append(proc)
        return proc

    @property
    def storage_root(self) -> Path:
        return Path(self.env["REELHOUSE_STORAGE_ROOT"])

    async def api(self, path: str, body: Any = None, *, verb: str = "POST") -> httpx.Response:
        """``/api/<path>`` (e.g. ``restream/create``) with the token."""
        return await self.client.request(verb, f"/api/{path}", json=body, headers=HEADERS)

    async def api_ok(self, path: str, body: Any = None, *, verb: str = "POST") -> Any:
        r = await self.api(path, body, verb=verb)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


@contextlib.asynccontextmanager
async def running_stack(service_env: dict[str, str], tmp: Path) -> AsyncIterator[Stack]:
    settings = settings_from_env(ApiSettings, service_env, bootstrap_token=TOKEN, stop_wait_s=15)
    async with api_client(settings) as client:
        stack = Stack(client=client, env=service_env, tmp=tmp)
        try:
            yield stack
        finally:
            for proc in [*stack.recorders, *stack.restreamers, *stack.janitors, *stack.ingests]:
                with contextlib.suppress(Exception):
                    await proc.terminate(timeout=20)
                await proc.kill()
