"""``/api/auth``: login (username, password → access JWT + refresh token), refresh, logout.

Counted per client address in the ``auth`` rate-limit bucket (the address after trusted proxies,
REELHOUSE_TRUSTED_PROXIES).

Refresh tokens rotate with reuse detection (OWASP): one login starts a chain (``family``); each
``refresh`` marks the token used and hands out its successor. A used token presented again means
two parties hold it, so the whole chain is revoked (the current successor included), the user's
access tokens are refused (token version bumped, every replica told over NATS), the event
``auth_refresh_reuse`` is published and a warning logged. ``logout`` ends the chain and the
user's access tokens the same way, without the alarm.

Two ways to hold the refresh token, one chain logic:

- scripts: ``login``, ``refresh``, ``logout`` carry it in the JSON bodies;
- the dashboard (a browser): ``session/login``, ``session/refresh``, ``session/logout`` keep it in
  the cookie :data:`REFRESH_COOKIE` (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https,
  ``Path=/api/auth/session`` so that refresh and logout receive it and nothing else does). Their
  bodies carry the access token and the user, never the refresh token. They require a JSON
  content type: with ``SameSite=Strict`` that is the CSRF defence (a cross-site form cannot send
  JSON, and a cross-site ``fetch`` with it needs a CORS preflight the API never grants).

``GET /api/auth/me`` says who the credentials are (role included) without a login.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Cookie, Depends, Request, Response

from reelhouse.api.accounts import service as accounts
from reelhouse.api.accounts.principal import AuthPrincipal, issue_access_token
from reelhouse.api.accounts.ratelimit import limit_auth
from reelhouse.api.accounts.schemas import (
    LoginBody,
    Me,
    RefreshBody,
    SessionBody,
    SessionTokens,
    TokenPair,
)
from reelhouse.api.accounts.service import Collections
from reelhouse.api.deps import Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.state import AppState
from reelhouse.common.contracts.messages import RefreshReuse
from reelhouse.common.errors import Unauthorized, ValidationFailed
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.auth")

router = APIRouter(
    prefix="/api/auth",
    tags=["auth"],
    dependencies=[Depends(limit_auth)],
    responses=documented(429),
)
me_router = APIRouter(prefix="/api/auth", tags=["auth"])
"""``/api/auth/me``: authenticated, so counted per caller (``auth`` bucket), not per address."""

SESSION_PATH = "/api/auth/session"
"""The refresh cookie's ``Path``: sent to ``session/refresh`` and ``session/logout`` only."""
REFRESH_COOKIE = "reelhouse_refresh"


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


async def _rotate(request: Request, state: AppState, token: str) -> TokenPair:
    """Use ``token`` up and issue its successor; a used one revokes its chain (401)."""
    use = await accounts.use_refresh_token(state.db, token)
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


async def _logout(request: Request, state: AppState, token: str) -> None:
    use = await accounts.use_refresh_token(state.db, token)
    if use.reused:
        await _refuse_reuse(request, state, use)
    elif use.doc is not None:
        await _end_session(state, use, reason="logout")
        log.info("logout", user_id=str(use.doc["user_id"]), tenant=use.doc["tenant"])


@router.post(
    "/refresh",
    summary="A refresh token → a new access JWT and a new refresh token",
    responses=documented(401, s401="UNAUTHORIZED: the refresh token is invalid, used or expired"),
)
async def refresh(request: Request, state: State, body: RefreshBody) -> TokenPair:
    """Rotate: the token is used up and its successor returned. Presenting a used token again
    revokes its whole chain and the user's access tokens (reuse detection)."""
    return await _rotate(request, state, body.refresh_token)


@router.post("/logout", summary="End the session: its refresh chain and the user's access tokens")
async def logout(request: Request, state: State, body: RefreshBody) -> dict[str, bool]:
    """Revoke the refresh token's chain; every access token of the user is refused from now on,
    on every replica (other sessions of the user get a new one with their refresh token)."""
    await _logout(request, state, body.refresh_token)
    return {"success": True}


# -- cookie mode: the dashboard ------------------------------------------------------------------


def _cookie_header(request: Request, value: str, max_age: int) -> str:
    """The ``Set-Cookie`` value of the refresh cookie (``max_age`` 0 clears it)."""
    scratch = Response()
    scratch.set_cookie(
        REFRESH_COOKIE,
        value,
        max_age=max_age,
        path=SESSION_PATH,
        secure=request.url.scheme == "https",  # the scheme after trusted proxies
        httponly=True,
        samesite="strict",
    )
    return scratch.headers["set-cookie"]


def _clear_cookie(request: Request) -> dict[str, str]:
    return {"set-cookie": _cookie_header(request, "", 0)}


async def json_only(request: Request) -> None:
    """CSRF defence of the cookie endpoints, with ``SameSite=Strict``: a JSON content type,
    which a cross-site form cannot send and a cross-site ``fetch`` cannot without a preflight."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ValidationFailed(
            "the session endpoints take Content-Type: application/json", field="content-type"
        )


RefreshCookie = Annotated[
    str | None,
    Cookie(alias=REFRESH_COOKIE, description="The refresh token (set by `session/login`)."),
]


def _session_answer(request: Request, response: Response, pair: TokenPair) -> SessionTokens:
    response.headers["set-cookie"] = _cookie_header(
        request, pair.refresh_token, pair.refresh_expires_in
    )
    response.headers["cache-control"] = "no-store"
    return SessionTokens(**pair.model_dump(exclude={"refresh_token"}))


@router.post(
    "/session/login",
    summary="Username and password → access JWT; the refresh token in an HttpOnly cookie",
    dependencies=[Depends(json_only)],
    responses=documented(401, s401="UNAUTHORIZED: wrong username or password"),
)
async def session_login(
    request: Request, response: Response, state: State, body: LoginBody
) -> SessionTokens:
    """The dashboard's login: like ``login``, but the refresh token is set as the cookie
    ``reelhouse_refresh`` (``HttpOnly; SameSite=Strict; Path=/api/auth/session``, ``Secure``
    over https) and left out of the body."""
    return _session_answer(request, response, await login(request, state, body))


@router.post(
    "/session/refresh",
    summary="The refresh cookie → a new access JWT and a new refresh cookie",
    dependencies=[Depends(json_only)],
    responses=documented(401, s401="UNAUTHORIZED: no session cookie, or it is invalid or used"),
)
async def session_refresh(
    request: Request,
    response: Response,
    state: State,
    _body: SessionBody,
    cookie: RefreshCookie = None,
) -> SessionTokens:
    """Rotate the cookie's token, with the same reuse detection as ``refresh``. A refused
    cookie is cleared."""
    if not cookie:
        raise Unauthorized("no session: log in", headers=_clear_cookie(request))
    try:
        pair = await _rotate(request, state, cookie)
    except Unauthorized as exc:
        raise Unauthorized(exc.message, headers=_clear_cookie(request)) from None
    return _session_answer(request, response, pair)


@router.post(
    "/session/logout",
    summary="End the cookie's session (its chain and the user's access tokens); clear it",
    dependencies=[Depends(json_only)],
)
async def session_logout(
    request: Request,
    response: Response,
    state: State,
    _body: SessionBody,
    cookie: RefreshCookie = None,
) -> dict[str, bool]:
    if cookie:
        await _logout(request, state, cookie)
    response.headers["set-cookie"] = _clear_cookie(request)["set-cookie"]
    return {"success": True}


@me_router.get("/me", summary="Who these credentials are: id, name, role, tenant")
async def me(principal: Principal) -> Me:
    return Me(
        id=principal.id,
        name=principal.name,
        role=principal.role,
        tenant=principal.tenant,
        kind=principal.kind,
    )
