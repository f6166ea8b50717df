"""Accounts for security tests: users (JWT) and API keys of a role and tenant, made through the
API with the bootstrap token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from reelhouse.api.accounts.principal import AuthPrincipal
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


async def stored_user(db: Any, role: str, tenant: str = "default") -> AuthPrincipal:
    """A user written straight to the database, for tests that sign their own access JWTs
    (token version 0: ``issue_access_token(..., version=0)``). A JWT must name a user that
    exists: the API checks its token version on every request."""
    from bson import ObjectId

    from reelhouse.common.contracts.base import utcnow

    user_id = ObjectId()
    name = f"{role}-{tenant}-{uuid.uuid4().hex[:8]}"
    now = utcnow()
    await db["users"].insert_one(
        {"_id": user_id, "tenant": tenant, "username": name, "password_hash": None, "role": role,
         "token_version": 0, "created": now, "modified": now}
    )  # fmt: skip
    return AuthPrincipal(id=str(user_id), tenant=tenant, role=role, kind="user", name=name)  # type: ignore[arg-type]
