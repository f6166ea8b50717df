"""``/api/auth``: login (username, password → access JWT + refresh token), refresh, logout.

Counted per client address in the ``auth`` rate-limit bucket. A refresh token is used once:
``refresh`` rotates it; ``logout`` revokes it.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from reelhouse.api import accounts
from reelhouse.api.accounts import Collections
from reelhouse.api.auth import AuthPrincipal, issue_access_token
from reelhouse.api.ratelimit import limit_auth
from reelhouse.api.state import State
from reelhouse.common.errors import Unauthorized
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.auth")

router = APIRouter(prefix="/api/auth", tags=["auth"], dependencies=[Depends(limit_auth)])


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=256)


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int = Field(description="Seconds the access token stays valid.")
    refresh_token: str
    refresh_expires_in: int
    user: dict[str, Any]
    success: bool = True


def _user_view(user: dict[str, Any]) -> dict[str, Any]:
    uid = str(user["_id"])
    return {"_id": uid, "id": uid, "username": user["username"], "role": user["role"],
            "tenant": user["tenant"]}  # fmt: skip


async def _issue(request: Request, state: State, user: dict[str, Any]) -> TokenPair:
    settings = state.settings
    principal = AuthPrincipal(
        id=str(user["_id"]),
        tenant=user["tenant"],
        role=user["role"],
        kind="user",
        name=user["username"],
    )
    secret = request.app.state.jwt_secret
    access = issue_access_token(secret, principal, settings.access_token_ttl_s)
    refresh = accounts.new_refresh_token()
    await accounts.store_refresh_token(
        state.db,
        tenant=principal.tenant,
        user_id=principal.id,
        token=refresh,
        ttl_s=settings.refresh_token_ttl_s,
    )
    return TokenPair(
        access_token=access,
        expires_in=settings.access_token_ttl_s,
        refresh_token=refresh,
        refresh_expires_in=settings.refresh_token_ttl_s,
        user=_user_view(user),
    )


@router.post("/login", summary="Username and password → access JWT and refresh token")
async def login(request: Request, state: State, body: LoginBody) -> TokenPair:
    user = await state.db[Collections.USERS].find_one({"username": body.username})
    hashed = user.get("password_hash") if user else None
    if not accounts.verify_password(hashed, body.password) or user is None:
        log.info("login_failed", username=body.username)
        raise Unauthorized("wrong username or password")
    log.info("login", user_id=str(user["_id"]), tenant=user["tenant"])
    return await _issue(request, state, user)


@router.post("/refresh", summary="A refresh token → a new access JWT and a new refresh token")
async def refresh(request: Request, state: State, body: RefreshBody) -> TokenPair:
    stored = await accounts.take_refresh_token(state.db, body.refresh_token)
    user = None
    if stored is not None and ObjectId.is_valid(stored["user_id"]):
        user = await state.db[Collections.USERS].find_one(
            {"_id": ObjectId(stored["user_id"]), "tenant": stored["tenant"]}
        )
    if user is None:
        raise Unauthorized("the refresh token is invalid, expired or revoked; log in again")
    return await _issue(request, state, user)


@router.post("/logout", summary="Revoke a refresh token")
async def logout(state: State, body: RefreshBody) -> dict[str, bool]:
    await accounts.take_refresh_token(state.db, body.refresh_token)
    return {"success": True}
