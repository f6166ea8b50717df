"""Forwarded headers are believed only from REELHOUSE_TRUSTED_PROXIES (issue 20, item 3;
docs/SECURITY.md).

The real entry point (``python -m reelhouse.api``, uvicorn and all) serves on a loopback port:
uvicorn's own default trusts ``X-Forwarded-For`` from 127.0.0.1, which is where every client of
a one-machine stack comes from, so only the real server shows whether that default is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
from support.infra import free_port
from support.services import ServiceProcess
from support.stack import TOKEN
from support.wait import eventually

AUTH_LIMIT = 10
"""The default auth limit: 10 per minute per client address."""
WRONG = {"username": "nobody", "password": "not the password"}


async def clear_of_minute_edge(margin_s: float = 15.0) -> None:
    """Auth windows are whole minutes on the clock: do not let a count straddle two of them."""
    left = 60 - time.time() % 60
    if left < margin_s:
        await asyncio.sleep(left + 0.2)  # until the clock reaches the next window


@contextlib.asynccontextmanager
async def served_api(service_env: dict[str, str], tmp_path, **env: str) -> AsyncIterator[str]:
    port = free_port()
    full = {**service_env, "REELHOUSE_API_PORT": str(port), "REELHOUSE_BOOTSTRAP_TOKEN": TOKEN,
            **env}  # fmt: skip
    full.pop("FORWARDED_ALLOW_IPS", None)
    api = ServiceProcess("api", full, tmp_path / f"api-{port}.log")
    await api.start()
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"{url}/api/health")).status_code in (200, 503)

    try:
        await eventually(answers, timeout=30, what="the API to listen", interval=0.1)
        await clear_of_minute_edge()
        yield url
    finally:
        try:
            await api.terminate(timeout=15)
        finally:
            await api.kill()


async def test_rotating_x_forwarded_for_does_not_escape_the_auth_limit(service_env, tmp_path):
    async with served_api(service_env, tmp_path) as url, httpx.AsyncClient(base_url=url) as c:
        codes = []
        for i in range(AUTH_LIMIT + 2):
            forged = {"X-Forwarded-For": f"203.0.113.{i + 1}", "X-Forwarded-Proto": "https"}
            r = await c.post("/api/auth/login", json=WRONG, headers=forged)
            codes.append(r.status_code)
        assert codes == [401] * AUTH_LIMIT + [429, 429]
        assert r.json()["error"]["code"] == "RATE_LIMITED"
        assert int(r.headers["Retry-After"]) > 0


async def test_x_forwarded_for_is_honoured_from_a_trusted_proxy(service_env, tmp_path):
    trusted = {"REELHOUSE_TRUSTED_PROXIES": "127.0.0.1"}
    async with (
        served_api(service_env, tmp_path, **trusted) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        # every forwarded client has a budget of its own ...
        for i in range(AUTH_LIMIT + 2):
            r = await c.post("/api/auth/login", json=WRONG,
                             headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})  # fmt: skip
            assert r.status_code == 401, r.text
            assert r.headers["X-RateLimit-Remaining"] == str(AUTH_LIMIT - 1)
        # ... and is counted as itself: the client a proxy names is the one that is limited
        # (the rightmost untrusted address of the chain; the proxy's own hop is skipped).
        codes = []
        for _ in range(AUTH_LIMIT + 1):
            r = await c.post("/api/auth/login", json=WRONG,
                             headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.1"})  # fmt: skip
            codes.append(r.status_code)
        assert codes == [401] * AUTH_LIMIT + [429]
