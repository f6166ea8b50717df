"""The dashboard's sessions: the refresh token in an HttpOnly cookie (issue 20, item 5;
docs/SECURITY.md, "Dashboard sessions").

The real API in-process on this test's database and NATS. Cookies are read from and sent as
headers by hand, so that every attribute the server sets is asserted, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import RefreshReuse
from reelhouse.common.subjects import Subjects

PASSWORD = "correct horse battery"
COOKIE = "reelhouse_refresh"
JSON = {"content-type": "application/json"}
REFRESH_TTL_S = 7 * 24 * 3600


@contextlib.asynccontextmanager
async def api(settings_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_from_env(
        ApiSettings,
        settings_env,
        bootstrap_token=TOKEN,
        rate_limit_enabled=False,
        refresh_token_ttl_s=REFRESH_TTL_S,
    )
    async with api_client(settings) as client:
        yield client


async def new_user(client: httpx.AsyncClient, role: str = "operator") -> str:
    username = f"dash-{role}-{uuid.uuid4().hex[:8]}"
    body = {"username": username, "password": PASSWORD, "role": role}
    r = await client.post("/api/users/create", json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    return username


def set_cookie(r: httpx.Response) -> dict[str, str]:
    """The refresh cookie the response sets: {"value": ..., attribute (lower case): value}."""
    headers = r.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    name_value, *attributes = [part.strip() for part in headers[0].split(";")]
    name, _, value = name_value.partition("=")
    assert name == COOKIE
    found = {"value": value.strip('"')}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        found[key.lower()] = val
    return found


def with_cookie(value: str) -> dict[str, str]:
    return {**JSON, "cookie": f"{COOKIE}={value}"}


async def session_login(client: httpx.AsyncClient, username: str) -> httpx.Response:
    body = {"username": username, "password": PASSWORD}
    r = await client.post("/api/auth/session/login", json=body)
    assert r.status_code == 200, r.text
    return r


async def refresh(client: httpx.AsyncClient, cookie: str) -> httpx.Response:
    return await client.post(
        "/api/auth/session/refresh", content=b"{}", headers=with_cookie(cookie)
    )


def code(r: httpx.Response) -> tuple[int, str | None]:
    try:
        return r.status_code, r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return r.status_code, None


async def test_session_login_sets_an_httponly_strict_cookie_and_keeps_the_token_out_of_the_body(
    settings_env,
):
    async with api(settings_env) as client:
        username = await new_user(client, "viewer")
        r = await session_login(client, username)
        body = r.json()
        assert "refresh_token" not in body
        assert body["user"]["role"] == "viewer"
        assert body["expires_in"] > 0
        assert body["refresh_expires_in"] == REFRESH_TTL_S
        assert r.headers["cache-control"] == "no-store"
        cookie = set_cookie(r)
        assert cookie["value"].startswith("rhr_")
        assert "httponly" in cookie
        assert cookie["samesite"].lower() == "strict"
        assert cookie["path"] == "/api/auth/session"
        assert cookie["max-age"] == str(REFRESH_TTL_S)
        assert "secure" not in cookie  # plain http: a Secure cookie would never come back
        assert "domain" not in cookie  # host-only

        # The access token is an ordinary access JWT; /api/auth/me gives the role.
        me = await client.get("/api/auth/me", headers={"x-access-token": body["access_token"]})
        assert me.status_code == 200, me.text
        assert (me.json()["name"], me.json()["role"], me.json()["kind"]) == (
            username, "viewer", "user"
        )  # fmt: skip

        # Over https (the scheme after trusted proxies) the cookie is Secure as well.
        https = httpx.AsyncClient(transport=client._transport, base_url="https://api")
        async with https:
            r = await session_login(https, username)
            assert "secure" in set_cookie(r)

        # The scripts' JSON login is unchanged: the refresh token in the body, no cookie.
        r = await client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200
        assert r.json()["refresh_token"].startswith("rhr_")
        assert "set-cookie" not in r.headers
        r = await client.post(
            "/api/auth/refresh", json={"refresh_token": r.json()["refresh_token"]}
        )
        assert r.status_code == 200
        assert "set-cookie" not in r.headers

        # /api/auth/me for the bootstrap token and without credentials.
        me = await client.get("/api/auth/me", headers=HEADERS)
        assert (me.json()["role"], me.json()["kind"]) == ("admin", "bootstrap")
        assert code(await client.get("/api/auth/me")) == (401, "UNAUTHORIZED")


async def test_session_endpoints_take_json_only(settings_env):
    """CSRF: a cross-site form can post with the cookie's browser; it cannot send JSON."""
    async with api(settings_env) as client:
        username = await new_user(client)
        cookie = set_cookie(await session_login(client, username))["value"]
        for content_type in ("application/x-www-form-urlencoded", "text/plain",
                             "multipart/form-data; boundary=x", None):  # fmt: skip
            headers = {"cookie": f"{COOKIE}={cookie}"}
            if content_type:
                headers["content-type"] = content_type
            for path in ("refresh", "logout"):
                r = await client.post(f"/api/auth/session/{path}", content=b"", headers=headers)
                assert code(r) == (400, "VALIDATION_ERROR"), (path, content_type)
                assert "set-cookie" not in r.headers
            r = await client.post(
                "/api/auth/session/login",
                content=f"username={username}&password=x".encode(),
                headers={"content-type": content_type} if content_type else {},
            )
            assert r.status_code == 400, content_type
        # None of those used the cookie up: it still rotates.
        assert (await refresh(client, cookie)).status_code == 200


async def test_the_cookie_rotates_and_a_reused_cookie_revokes_the_chain(settings_env, db):
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    nc = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
    seen: asyncio.Queue[RefreshReuse] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await seen.put(RefreshReuse.model_validate_json(msg.data))

    await nc.subscribe(Subjects(prefix).auth_event("auth_refresh_reuse"), cb=on_event)
    try:
        async with api(settings_env) as client:
            username = await new_user(client)
            first = set_cookie(await session_login(client, username))["value"]
            r = await refresh(client, first)
            assert r.status_code == 200, r.text
            second = set_cookie(r)
            assert second["value"] != first
            assert "httponly" in second
            assert second["path"] == "/api/auth/session"
            assert "refresh_token" not in r.json()
            r = await refresh(client, second["value"])
            assert r.status_code == 200
            current = set_cookie(r)["value"]
            access = {"x-access-token": r.json()["access_token"]}
            assert (await client.post("/api/recording/getAll", json={}, headers=access)
                    ).status_code == 200  # fmt: skip

            # The first cookie was rotated away: someone else holds it.
            r = await refresh(client, first)
            assert code(r) == (401, "UNAUTHORIZED")
            cleared = set_cookie(r)
            assert (cleared["value"], cleared["max-age"]) == ("", "0")
            event = await asyncio.wait_for(seen.get(), 5)
            assert event.revoked == 3
            assert await db["refresh_tokens"].count_documents({"family": event.family}) == 0
            # The chain's newest cookie and its access token are refused as well.
            assert code(await refresh(client, current)) == (401, "UNAUTHORIZED")
            r = await client.post("/api/recording/getAll", json={}, headers=access)
            assert code(r) == (401, "UNAUTHORIZED")
            # And the reuse works the same between the two modes: the chain is one.
            r = await client.post("/api/auth/refresh", json={"refresh_token": current})
            assert code(r) == (401, "UNAUTHORIZED")
    finally:
        await nc.close()


async def test_session_logout_revokes_server_side_and_clears_the_cookie(settings_env, db):
    async with api(settings_env) as client:
        username = await new_user(client)
        r = await session_login(client, username)
        cookie = set_cookie(r)["value"]
        access = {"x-access-token": r.json()["access_token"]}
        r = await client.post(
            "/api/auth/session/logout", content=b"{}", headers=with_cookie(cookie)
        )
        assert r.status_code == 200, r.text
        cleared = set_cookie(r)
        assert (cleared["value"], cleared["max-age"], cleared["path"]) == (
            "", "0", "/api/auth/session"
        )  # fmt: skip
        assert "httponly" in cleared
        # Server side: the token is gone, the cookie a browser might still send is refused, and
        # the session's access token is refused.
        assert await db["refresh_tokens"].count_documents({}) == 0
        assert code(await refresh(client, cookie)) == (401, "UNAUTHORIZED")
        r = await client.post("/api/recording/getAll", json={}, headers=access)
        assert code(r) == (401, "UNAUTHORIZED")
        # Without a cookie: nothing to revoke, the answer still clears.
        r = await client.post("/api/auth/session/logout", json={})
        assert r.status_code == 200
        assert set_cookie(r)["max-age"] == "0"
        r = await client.post("/api/auth/session/refresh", json={})
        assert code(r) == (401, "UNAUTHORIZED")
