"""Revocation reaches every replica within a second; keys never outrank their creator; a reused
refresh token revokes its chain (issue 20, items 2 and 4; docs/SECURITY.md).

Two API apps share this test's database and NATS, as two replicas of a deployment would. Their
credential caches keep answers for 60 s here, so only the NATS invalidation can explain a
refusal within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from support.auth import make_key, make_user
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN
from support.wait import eventually

from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import RefreshReuse
from reelhouse.common.subjects import Subjects

PASSWORD = "correct horse battery"
MISSING = "66004d2997300f9385d32b00"
CACHE_TTL_S = 60.0
"""Longer than any wait here: a refusal within 1 s comes from the NATS message, not expiry."""


@contextlib.asynccontextmanager
async def replicas(settings_env: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    """Two API apps on the same database and NATS."""
    settings = settings_from_env(
        ApiSettings,
        settings_env,
        bootstrap_token=TOKEN,
        rate_limit_enabled=False,
        auth_cache_ttl_s=CACHE_TTL_S,
    )
    async with api_client(settings) as a, api_client(settings) as b:
        for app in (a, b):  # each replica listens for invalidations before the test begins
            cache = app.app.state.reelhouse.credentials
            await eventually(lambda c=cache: c.live, timeout=10, what="the cache subscription")
        yield a, b


def code(r: httpx.Response) -> tuple[int, str | None]:
    try:
        return r.status_code, r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return r.status_code, None


def misses(client: Any) -> int:
    return client.app.state.reelhouse.credentials.misses


async def login(client: Any, username: str) -> dict[str, Any]:
    r = await client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


async def new_admin(client: Any) -> tuple[str, str, dict[str, Any]]:
    """A user with the admin role, logged in: (id, username, token pair)."""
    caller = await make_user(client, "admin")
    users = (await client.post("/api/users/getAll", json={}, headers=HEADERS)).json()
    username = next(u["username"] for u in users if u["id"] == caller.id)
    return caller.id, username, await login(client, username)


EVERY_KIND_OF_ACTION = [
    ("POST", "/api/recording/getAll", {}),  # read
    ("POST", "/api/recording/stop", {"id": MISSING}),  # operator write
    ("POST", "/api/keys/create", {"name": "minted after revocation", "role": "admin"}),  # admin
    ("POST", "/api/users/getAll", {}),
]


async def refused_everywhere(client: Any, headers: dict[str, str]) -> bool:
    for method, path, body in EVERY_KIND_OF_ACTION:
        r = await client.request(method, path, json=body, headers=headers)
        if code(r) != (401, "UNAUTHORIZED"):
            return False
    return True


async def revoke(client: Any, how: str, user_id: str, pair: dict[str, Any]) -> None:
    if how == "logout":
        r = await client.post("/api/auth/logout", json={"refresh_token": pair["refresh_token"]})
    elif how == "remove":
        r = await client.request("DELETE", "/api/users/remove", json={"id": user_id},
                                 headers=HEADERS)  # fmt: skip
    elif how == "role change":
        r = await client.post("/api/users/update", json={"id": user_id, "role": "viewer"},
                              headers=HEADERS)  # fmt: skip
    else:
        r = await client.post(
            "/api/users/update", json={"id": user_id, "password": "another long passphrase"},
            headers=HEADERS,
        )  # fmt: skip
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("how", ["logout", "remove", "role change", "password change"])
async def test_a_revoked_access_token_is_refused_on_the_other_replica_within_a_second(
    settings_env, how
):
    async with replicas(settings_env) as (a, b):
        user_id, _, pair = await new_admin(a)
        headers = {"x-access-token": pair["access_token"]}
        for replica in (a, b):  # both replicas have the user's token version cached
            r = await replica.post("/api/users/getAll", json={}, headers=headers)
            assert r.status_code == 200, r.text
        # ... and answer from it: no database read per request
        before = misses(b)
        for _ in range(10):
            r = await b.post("/api/recording/getAll", json={}, headers=headers)
            assert r.status_code == 200, r.text
        assert misses(b) == before

        await revoke(a, how, user_id, pair)
        revoked_at = time.monotonic()
        assert await refused_everywhere(a, headers)  # the replica that made the change: at once
        await eventually(
            lambda: refused_everywhere(b, headers),
            timeout=1.0,
            what=f"the other replica to refuse the token after {how}",
        )
        assert time.monotonic() - revoked_at < 1.0
        r = await b.post("/api/recording/getAll", json={}, headers=headers)
        assert "revoked" in r.json()["error"]["message"]
        # nothing was minted with the old token after the change
        keys = (await a.post("/api/keys/getAll", json={}, headers=HEADERS)).json()
        assert not [k for k in keys if k["name"] == "minted after revocation"]


async def test_a_key_never_holds_more_than_its_creator_still_may(settings_env):
    """Decision (docs/SECURITY.md): a key acts with min(its role, its creator's current role);
    a key made by a key is bounded by that key the same way; a removed creator's keys are
    refused. Every change is seen by the other replica within a second."""
    async with replicas(settings_env) as (a, b):
        user_id, _, pair = await new_admin(a)
        admin_headers = {"x-access-token": pair["access_token"]}
        key = await make_key(a, "admin", admin_headers)
        grandchild = await make_key(a, "admin", key.headers)  # made by the key
        stop = ("POST", "/api/recording/stop", {"id": MISSING})

        async def roles_seen_on_b() -> tuple[tuple[int, str | None], ...]:
            out = []
            for caller in (key, grandchild):
                r = await b.post("/api/keys/getAll", json={}, headers=caller.headers)
                out.append(code(r))
                r = await b.request(stop[0], stop[1], json=stop[2], headers=caller.headers)
                out.append(code(r))
            return tuple(out)

        admin = ((200, None), (404, "NOT_FOUND")) * 2
        operator = ((403, "FORBIDDEN"), (404, "NOT_FOUND")) * 2
        viewer = ((403, "FORBIDDEN"), (403, "FORBIDDEN")) * 2
        refused = ((401, "UNAUTHORIZED"),) * 4
        assert await roles_seen_on_b() == admin

        async def change_and_expect(change: dict[str, Any] | None, expected: Any, what: str):
            if change is None:
                r = await a.request("DELETE", "/api/users/remove", json={"id": user_id},
                                    headers=HEADERS)  # fmt: skip
            else:
                r = await a.post("/api/users/update", json={"id": user_id, **change},
                                 headers=HEADERS)  # fmt: skip
            assert r.status_code == 200, r.text
            started = time.monotonic()
            await eventually(
                lambda: _equals(roles_seen_on_b, expected), timeout=1.0, what=what, interval=0.05
            )
            assert time.monotonic() - started < 1.0

        await change_and_expect({"role": "operator"}, operator, "keys bounded by operator")
        r = await b.post("/api/keys/create", json={"name": "x", "role": "operator"},
                         headers=key.headers)  # fmt: skip
        assert code(r) == (403, "FORBIDDEN")  # cannot manage keys any more, let alone mint
        await change_and_expect({"role": "viewer"}, viewer, "keys bounded by viewer")
        await change_and_expect({"role": "admin"}, admin, "keys back to their own role")
        await change_and_expect(None, refused, "a removed creator's keys refused")
        r = await b.post("/api/recording/getAll", json={}, headers=key.headers)
        assert "revoked" in r.json()["error"]["message"]


async def _equals(probe: Any, expected: Any) -> bool:
    return await probe() == expected


async def test_a_removed_key_is_refused_on_the_other_replica_within_a_second(settings_env):
    async with replicas(settings_env) as (a, b):
        key = await make_key(a, "operator")
        for _ in range(3):
            r = await b.post("/api/recording/getAll", json={}, headers=key.headers)
            assert r.status_code == 200, r.text
        before = misses(b)
        r = await b.post("/api/recording/getAll", json={}, headers=key.headers)
        assert misses(b) == before  # answered from the cache
        r = await a.request("DELETE", "/api/keys/remove", json={"id": key.id}, headers=HEADERS)
        assert r.status_code == 200
        started = time.monotonic()

        async def refused() -> bool:
            r = await b.post("/api/recording/getAll", json={}, headers=key.headers)
            return code(r) == (401, "UNAUTHORIZED")

        await eventually(refused, timeout=1.0, what="the removed key to be refused on b")
        assert time.monotonic() - started < 1.0


async def test_a_reused_refresh_token_revokes_its_whole_chain(settings_env, db):
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    nc = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    seen: asyncio.Queue[RefreshReuse] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await seen.put(RefreshReuse.model_validate_json(msg.data))

    await nc.subscribe(Subjects(prefix).auth_event("auth_refresh_reuse"), cb=on_event)
    try:
        async with replicas(settings_env) as (a, b):
            user_id, username, first = await new_admin(a)
            other_session = await login(a, username)  # another login: a chain of its own
            second = await _refresh(a, first["refresh_token"])
            current = await _refresh(b, second["refresh_token"])  # the chain's newest token
            current_headers = {"x-access-token": current["access_token"]}
            assert (await b.post("/api/users/getAll", json={}, headers=current_headers)
                    ).status_code == 200  # fmt: skip

            # The first token was rotated long ago: someone else holds it.
            r = await b.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
            assert code(r) == (401, "UNAUTHORIZED")

            event = await asyncio.wait_for(seen.get(), 5)
            assert (event.type, event.user_id, event.tenant) == (
                "auth_refresh_reuse", user_id, "default"
            )  # fmt: skip
            assert event.revoked == 3  # the chain: first, second and current
            assert event.client == "127.0.0.1"
            # the successor is revoked: its refresh token and its access token, on both replicas
            for replica in (a, b):
                r = await replica.post(
                    "/api/auth/refresh", json={"refresh_token": current["refresh_token"]}
                )
                assert code(r) == (401, "UNAUTHORIZED")
            for replica in (a, b):
                await eventually(
                    lambda r=replica: refused_everywhere(r, current_headers),
                    timeout=1.0,
                    what="the successor's access token to be refused",
                )
            assert await db["refresh_tokens"].count_documents({"family": event.family}) == 0
            # The other login's chain stands: it refreshes (its old access token was refused with
            # every other one of the user's: the new one works).
            renewed = await _refresh(a, other_session["refresh_token"])
            r = await b.post("/api/users/getAll", json={},
                             headers={"x-access-token": renewed["access_token"]})  # fmt: skip
            assert r.status_code == 200
    finally:
        await nc.close()


async def test_a_reused_refresh_token_is_logged_as_a_warning(settings_env, capsys):
    async with replicas(settings_env) as (a, _):
        _, _, first = await new_admin(a)
        await _refresh(a, first["refresh_token"])
        capsys.readouterr()
        r = await a.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert code(r) == (401, "UNAUTHORIZED")
        out = capsys.readouterr().out
        line = next(ln for ln in out.splitlines() if "auth_refresh_reuse" in ln)
        assert "warning" in line


async def _refresh(client: Any, token: str) -> dict[str, Any]:
    r = await client.post("/api/auth/refresh", json={"refresh_token": token})
    assert r.status_code == 200, r.text
    return r.json()
