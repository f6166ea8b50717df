"""``/api/auth``: login (username, password → access JWT + refresh token), refresh, logout.

Counted per client address in the ``auth`` rate-limit bucket (the address after trusted proxies,
REELHOUSE_TRUSTED_PROXIES).

Refresh tokens rotate with reuse detection (OWASP): one login starts a chain (``family``); each
``refresh`` marks the token used and hands out its successor. A used token presented again means
two parties hold it, so the whole chain is revoked (the current successor included), the user's
access tokens are refused (token version bumped, every replica told over NATS), the event
``auth_refresh_reuse`` is published and a warning logged. ``logout`` ends the chain and the
user's access tokens the same way, without the alarm.
"""

from __future__ import annotations

import uuid
from typing import Any

from bson import ObjectId
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from reelhouse.api import accounts
from reelhouse.api.accounts import Collections
from reelhouse.api.auth import AuthPrincipal, issue_access_token
from reelhouse.api.errors import documented
from reelhouse.api.ratelimit import limit_auth
from reelhouse.api.state import AppState, State
from reelhouse.common.contracts.messages import RefreshReuse
from reelhouse.common.errors import Unauthorized
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.auth")

router = APIRouter(
    prefix="/api/auth",
    tags=["auth"],
    dependencies=[Depends(limit_auth)],
    responses=documented(429),
)


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


async def _issue(
    request: Request, state: State, user: dict[str, Any], *, family: str | None = None
) -> TokenPair:
    """A new access JWT and the next refresh token of ``family`` (None: a new login)."""
    settings = state.settings
    principal = AuthPrincipal(
        id=str(user["_id"]),
        tenant=user["tenant"],
        role=user["role"],
        kind="user",
        name=user["username"],
    )
    secret = request.app.state.jwt_secret
    access = issue_access_token(
        secret, principal, settings.access_token_ttl_s, version=int(user.get("token_version", 0))
    )
    refresh = accounts.new_refresh_token()
    await accounts.store_refresh_token(
        state.db,
        tenant=principal.tenant,
        user_id=principal.id,
        token=refresh,
        family=family or uuid.uuid4().hex,
        ttl_s=settings.refresh_token_ttl_s,
    )
    return TokenPair(
        access_token=access,
        expires_in=settings.access_token_ttl_s,
        refresh_token=refresh,
        refresh_expires_in=settings.refresh_token_ttl_s,
        user=_user_view(user),
    )


@router.post(
    "/login",
    summary="Username and password → access JWT and refresh token",
    responses=documented(401, s401="UNAUTHORIZED: wrong username or password"),
)
async def login(request: Request, state: State, body: LoginBody) -> TokenPair:
    user = await state.db[Collections.USERS].find_one({"username": body.username})
    hashed = user.get("password_hash") if user else None
    if not accounts.verify_password(hashed, body.password) or user is None:
        log.info("login_failed", username=body.username)
        raise Unauthorized("wrong username or password")
    log.info("login", user_id=str(user["_id"]), tenant=user["tenant"])
    return await _issue(request, state, user)


REFRESH_REFUSED = "the refresh token is invalid, expired or revoked; log in again"


async def _end_session(state: AppState, use: accounts.RefreshUse, *, reason: str) -> int:
    """Delete the chain ``use`` belongs to and refuse the user's access tokens everywhere."""
    assert use.doc is not None
    revoked = await accounts.revoke_refresh_family(state.db, use)
    user_id = str(use.doc["user_id"])
    await accounts.bump_token_version(state.db, user_id)
    await state.credentials.changed(reason=reason, user_id=user_id)
    return revoked


async def _refuse_reuse(request: Request, state: AppState, use: accounts.RefreshUse) -> None:
    """A used refresh token came back: revoke its chain, raise the alarm."""
    assert use.doc is not None
    revoked = await _end_session(state, use, reason="refresh_reuse")
    client = request.client.host if request.client else None
    facts = {"tenant": use.doc["tenant"], "user_id": str(use.doc["user_id"]),
             "family": str(use.family), "revoked": revoked, "client": client}  # fmt: skip
    log.warning("auth_refresh_reuse", **facts)
    event = RefreshReuse(**facts, node=state.node.node_id)
    try:
        await state.bus.publish(state.bus.subjects.auth_event("auth_refresh_reuse"), event)
    except Exception as exc:  # the chain is revoked either way; the log line stays
        log.warning("auth_refresh_reuse_not_published", error=str(exc)[:200])


@router.post(
    "/refresh",
    summary="A refresh token → a new access JWT and a new refresh token",
    responses=documented(401, s401="UNAUTHORIZED: the refresh token is invalid, used or expired"),
)
async def refresh(request: Request, state: State, body: RefreshBody) -> TokenPair:
    """Rotate: the token is used up and its successor returned. Presenting a used token again
    revokes its whole chain and the user's access tokens (reuse detection)."""
    use = await accounts.use_refresh_token(state.db, body.refresh_token)
    if use.reused:
        await _refuse_reuse(request, state, use)
        raise Unauthorized(REFRESH_REFUSED)
    user = None
    if use.doc is not None and ObjectId.is_valid(use.doc["user_id"]):
        user = await state.db[Collections.USERS].find_one(
            {"_id": ObjectId(use.doc["user_id"]), "tenant": use.doc["tenant"]}
        )
    if user is None:
        raise Unauthorized(REFRESH_REFUSED)
    return await _issue(request, state, user, family=use.family)


@router.post("/logout", summary="End the session: its refresh chain and the user's access tokens")
async def logout(request: Request, state: State, body: RefreshBody) -> dict[str, bool]:
    """Revoke the refresh token's chain; every access token of the user is refused from now on,
    on every replica (other sessions of the user get a new one with their refresh token)."""
    use = await accounts.use_refresh_token(state.db, body.refresh_token)
    if use.reused:
        await _refuse_reuse(request, state, use)
    elif use.doc is not None:
        await _end_session(state, use, reason="logout")
        log.info("logout", user_id=str(use.doc["user_id"]), tenant=use.doc["tenant"])
    return {"success": True}
