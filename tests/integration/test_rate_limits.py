"""Rate limits (issue 7): counted in MongoDB, so two API replicas enforce one limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support.auth import make_key, make_user
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.settings import ApiSettings


async def clear_of_window_edge(period_s: int = 3600, margin_s: float = 60.0) -> None:
    """Windows are fixed and aligned to the clock (an hour starts at :00): a test that counts
    down must not straddle a window's end, so wait for the next window when this one is about to
    close (in CI this test once ran across midnight and saw its count start again)."""
    left = period_s - time.time() % period_s
    if left < margin_s:
        await asyncio.sleep(left + 0.5)  # until the clock reaches the next window


@contextlib.asynccontextmanager
async def replicas(settings_env: dict[str, str], **limits: Any) -> AsyncIterator[list[Any]]:
    """Two API apps on the same database and NATS (what two containers would be)."""
    await clear_of_window_edge()
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN, **limits)
    async with api_client(settings) as a, api_client(settings) as b:
        yield [a, b]


def window(r: httpx.Response) -> tuple[int, int, int]:
    h = r.headers
    return int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"])


async def test_read_and_write_limits_count_down_across_two_replicas(settings_env):
    async with replicas(settings_env, rate_limit_read="5/hour", rate_limit_write="3/hour") as apps:
        caller = await make_key(apps[0], "operator")
        seen = []
        for i in range(5):
            r = await apps[i % 2].post("/api/recording/getAll", json={}, headers=caller.headers)
            assert r.status_code == 200, r.text
            seen.append(window(r))
        assert [remaining for _, remaining, _ in seen] == [4, 3, 2, 1, 0]
        assert {limit for limit, _, _ in seen} == {5}
        reset = seen[0][2]
        assert time.time() < reset <= time.time() + 3600
        r = await apps[1].post("/api/recording/getAll", json={}, headers=caller.headers)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "RATE_LIMITED"
        assert r.json()["success"] is False
        assert 0 < int(r.headers["Retry-After"]) <= 3600
        assert window(r)[:2] == (5, 0)
        # GET and get* are reads: their budget is spent too
        r = await apps[0].post("/api/streams/getCount", json={}, headers=caller.headers)
        assert r.status_code == 429

        # writes have their own budget (3), counted across both replicas
        codes = []
        for i in range(4):
            r = await apps[i % 2].post(
                "/api/recording/stop",
                json={"id": "66004d2997300f9385d32b00"},
                headers=caller.headers,
            )
            codes.append((r.status_code, r.headers.get("X-RateLimit-Remaining")))
        assert codes == [(404, "2"), (404, "1"), (404, "0"), (429, "0")]

        # another caller has its own budget; the bootstrap token is not limited
        other = await make_user(apps[1], "viewer")
        r = await apps[0].post("/api/recording/getAll", json={}, headers=other.headers)
        assert window(r)[1] == 4
        for _ in range(7):
            r = await apps[1].post("/api/recording/getAll", json={}, headers=HEADERS)
            assert r.status_code == 200
            assert "X-RateLimit-Limit" not in r.headers


async def test_auth_endpoints_are_limited_per_client(settings_env):
    async with replicas(settings_env, rate_limit_auth="3/hour") as apps:
        codes = []
        for i in range(4):
            r = await apps[i % 2].post(
                "/api/auth/login", json={"username": "nobody", "password": "whatever1"}
            )
            codes.append((r.status_code, r.headers.get("X-RateLimit-Remaining")))
        assert codes == [(401, "2"), (401, "1"), (401, "0"), (429, "0")]
        assert int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "RATE_LIMITED"


async def test_limits_can_be_switched_off(settings_env):
    async with replicas(settings_env, rate_limit_read="1/hour", rate_limit_enabled=False) as apps:
        caller = await make_key(apps[0], "viewer")
        for i in range(4):
            r = await apps[i % 2].post("/api/recording/getAll", json={}, headers=caller.headers)
            assert r.status_code == 200
            assert "X-RateLimit-Limit" not in r.headers


def test_a_malformed_limit_is_refused_at_start(settings_env):
    with pytest.raises(ValueError, match="100/minute"):
        settings_from_env(ApiSettings, settings_env, rate_limit_read="lots")
