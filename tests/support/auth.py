"""Accounts for security tests: users (JWT) and API keys of a role and tenant, made through the
API with the bootstrap token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from support.stack import HEADERS


@dataclass
class Caller:
    """Credentials of one role in one tenant, as request headers."""

    role: str
    tenant: str
    kind: str  # "user" (JWT in x-access-token) or "key"
    headers: dict[str, str]
    id: str


async def make_user(
    client: httpx.AsyncClient, role: str, tenant: str = "default", *, bearer: bool = False
) -> Caller:
    """A new user of ``role`` in ``tenant``, logged in (access JWT)."""
    username = f"{role}-{tenant}-{uuid.uuid4().hex[:8]}"
    body = {"username": username, "password": "correct horse battery", "role": role}
    if tenant != "default":
        body["tenant"] = tenant
    r = await client.post("/api/users/create", json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    r = await client.post(
        "/api/auth/login", json={"username": username, "password": "correct horse battery"}
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"} if bearer else {"x-access-token": token}
    return Caller(role, tenant, "user", headers, r.json()["user"]["id"])


async def make_key(
    client: httpx.AsyncClient,
    role: str,
    admin_headers: dict[str, str] | None = None,
    tenant: str = "default",
) -> Caller:
    """A new API key of ``role``, made by ``admin_headers`` (default: the bootstrap admin)."""
    r = await client.post(
        "/api/keys/create", json={"name": f"{role} key", "role": role},
        headers=admin_headers or HEADERS,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return Caller(role, tenant, "key", {"x-access-token": r.json()["key"]}, r.json()["id"])
