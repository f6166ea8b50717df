"""Who is calling, and what they may do (docs/ARCHITECTURE.md §6).

Names other modules rely on (routes take the ``Annotated`` aliases of
:mod:`reelhouse.api.deps`: ``Principal``, ``PlayerPrincipal``, ``Viewer``, ``Operator``,
``Admin``, ``SystemAdmin``):

- :func:`authenticate` — the authenticated caller, an :class:`AuthPrincipal` (``.id``,
  ``.tenant``, ``.role``, ``.kind``). Any role may read.
- :func:`authenticate_player` — the same, also accepting ``?token=`` (media a player fetches:
  HLS monitoring, dashboard thumbnail/play).
- :func:`require_role` — ``require_role("viewer" | "operator" | "admin")`` returns a dependency
  that yields the principal or raises 403 ``FORBIDDEN``.
- :func:`require_operator_admin` — an admin of the ``default`` tenant, else 403.
- :func:`tenant_of` — the principal's tenant (every query is scoped by it).

Credentials, in ``x-access-token`` or ``Authorization: Bearer``:

- the bootstrap token (REELHOUSE_BOOTSTRAP_TOKEN): the first admin of tenant ``default``;
- an access JWT from ``/api/auth/login`` (HS256, ``typ: access``, short-lived). Its ``ver``
  claim must equal the user's current token version: logout, a password or role change, a
  refresh-token reuse and removal bump or end it, and the old token is refused everywhere;
- an API key (``rhk_…``) from ``/api/keys/create``, found by its SHA-256. Its role is at most
  what its creator may still do: ``min(key role, creator's current role)``, recursively for a
  key made by a key; a key whose creator was removed is refused.

Token versions and key lookups come from the replica's
:class:`~reelhouse.api.accounts.credential_cache.CredentialCache` (no database read per request);
changes reach every replica over NATS.

Authenticating an HTTP request also counts it against the caller's rate limit
(:mod:`reelhouse.api.accounts.ratelimit`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import jwt
from fastapi import Depends, Header, Query
from pymongo.asynchronous.database import AsyncDatabase
from starlette.requests import HTTPConnection

from reelhouse.api.accounts import service as accounts
from reelhouse.api.accounts.credential_cache import CredentialCache
from reelhouse.api.accounts.ratelimit import bucket_of, hit
from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import DEFAULT_TENANT
from reelhouse.common.errors import Forbidden, Unauthorized
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.auth")

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
"""Lowest to highest; each role may do what the ones before it may."""

JWT_ALGORITHM = "HS256"
JWT_SECRET_FILE_NAME = "jwt-secret"  # noqa: S105 (a file name, not a secret)
BOOTSTRAP_ID = "bootstrap"


@dataclass(frozen=True)
class AuthPrincipal:
    """The authenticated caller."""

    id: str
    """User id, API key id, or ``bootstrap``."""
    tenant: str
    role: Role
    kind: Literal["bootstrap", "user", "key"]
    name: str = ""
    """Username or key name (logs, ``/api/auth/me``)."""

    def allows(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def tenant_of(principal: AuthPrincipal) -> str:
    """The caller's tenant."""
    return principal.tenant


def _write_secret_file(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def resolve_bootstrap_token(settings: ApiSettings) -> str:
    """The configured token, else the one kept in the token file, else a new one written there."""
    if settings.bootstrap_token is not None:
        token = settings.bootstrap_token.get_secret_value()
        if len(token) < 16:
            raise ValueError("REELHOUSE_BOOTSTRAP_TOKEN must be at least 16 characters")
        return token
    path = settings.bootstrap_token_file
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    _write_secret_file(path, token)
    log.warning("bootstrap_token_generated", path=str(path))
    return token


def resolve_jwt_secret(settings: ApiSettings) -> str:
    """The configured JWT key, else the one kept next to the bootstrap token, else a new one."""
    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        secret = settings.jwt_secret.get_secret_value()
        if len(secret) < 32:
            raise ValueError("REELHOUSE_JWT_SECRET must be at least 32 characters")
        return secret
    path = settings.bootstrap_token_file.parent / JWT_SECRET_FILE_NAME
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_urlsafe(48)
    _write_secret_file(path, secret)
    log.info("jwt_secret_generated", path=str(path))
    return secret


def issue_access_token(secret: str, principal: AuthPrincipal, ttl_s: int, *, version: int) -> str:
    """A signed access JWT for a user principal whose token version is ``version``."""
    now = int(time.time())
    claims = {
        "sub": principal.id,
        "tid": principal.tenant,
        "role": principal.role,
        "name": principal.name,
        "ver": version,
        "typ": "access",
        "iat": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


REVOKED_JWT_MESSAGE = (
    "the access token was revoked (logout, a password or role change, or the user was removed); "
    "log in again"
)
REVOKED_KEY_MESSAGE = "invalid or revoked API key"


def _from_jwt(secret: str, token: str) -> tuple[AuthPrincipal, int]:
    """The principal the JWT names and its token version (signature and expiry checked)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "iat", "sub", "tid", "role", "typ", "ver"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the access token has expired; use /api/auth/refresh") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid access token") from None
    version = claims.get("ver")
    if claims.get("typ") != "access" or claims.get("role") not in ROLES or type(version) is not int:
        raise Unauthorized("invalid access token")
    principal = AuthPrincipal(
        id=str(claims["sub"]),
        tenant=str(claims["tid"]),
        role=claims["role"],
        kind="user",
        name=str(claims.get("name", "")),
    )
    return principal, version


def _lower(a: Role, b: Role) -> Role:
    return a if ROLES.index(a) <= ROLES.index(b) else b


MAX_KEY_CHAIN = 8
"""Keys made by keys made by keys...: deeper chains are refused (none is made in practice)."""


async def _creator_ceiling(
    db: AsyncDatabase, cache: CredentialCache, key: dict[str, Any], depth: int = 0
) -> Role | None:
    """The most a key may do because of who made it: its creator's current role (a user), the
    creating key's own effective role (a key), admin (the bootstrap token); None when the
    creator is gone, in another tenant, or the chain is too deep."""
    creator = str(key.get("created_by") or "")
    kind = key.get("created_by_kind")
    if creator == BOOTSTRAP_ID and kind in (None, "bootstrap"):
        return "admin"
    if kind in (None, "user"):
        facts = await cache.get("user", creator, lambda: accounts.user_facts(db, creator))
        if facts is not None:
            return facts.role if facts.tenant == key["tenant"] else None  # type: ignore[return-value]
        if kind == "user":
            return None
    if depth >= MAX_KEY_CHAIN:
        return None
    parent = await accounts.find_key_by_id(db, creator)
    if parent is None or parent["tenant"] != key["tenant"] or parent["role"] not in ROLES:
        return None
    ceiling = await _creator_ceiling(db, cache, parent, depth + 1)
    return None if ceiling is None else _lower(parent["role"], ceiling)


async def _key_principal(
    db: AsyncDatabase, cache: CredentialCache, key_hash: str
) -> AuthPrincipal | None:
    key = await accounts.find_key_by_hash(db, key_hash)
    if key is None or key["role"] not in ROLES:
        return None
    ceiling = await _creator_ceiling(db, cache, key)
    if ceiling is None:
        log.info("api_key_refused_creator_gone", key_id=str(key["_id"]))
        return None
    return AuthPrincipal(
        id=str(key["_id"]),
        tenant=key["tenant"],
        role=_lower(key["role"], ceiling),
        kind="key",
        name=key.get("name", ""),
    )


async def verify_credential(conn: HTTPConnection, token: str) -> AuthPrincipal:
    """The principal a credential stands for, or 401 ``UNAUTHORIZED``."""
    expected: str = conn.app.state.bootstrap_token
    if hmac.compare_digest(token.encode(), expected.encode()):
        return AuthPrincipal(
            id=BOOTSTRAP_ID, tenant=DEFAULT_TENANT, role="admin", kind="bootstrap", name="bootstrap"
        )
    state = conn.app.state.reelhouse
    cache: CredentialCache = state.credentials
    if token.startswith(accounts.KEY_PREFIX):
        key_hash = accounts.sha256(token)
        found = await cache.get("key", key_hash, lambda: _key_principal(state.db, cache, key_hash))
        if found is None:
            raise Unauthorized(REVOKED_KEY_MESSAGE)
        return found
    if token.count(".") == 2:
        principal, version = _from_jwt(conn.app.state.jwt_secret, token)
        facts = await cache.get(
            "user", principal.id, lambda: accounts.user_facts(state.db, principal.id)
        )
        if (
            facts is None
            or facts.tenant != principal.tenant
            or facts.role != principal.role
            or facts.token_version != version
        ):
            raise Unauthorized(REVOKED_JWT_MESSAGE)
        return principal
    raise Unauthorized("invalid access token")


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def request_credential(conn: HTTPConnection) -> str | None:
    """The credential a request carries: ``x-access-token``, ``Authorization: Bearer`` or
    ``?token=``; None without one."""
    return (
        conn.headers.get("x-access-token")
        or _bearer(conn.headers.get("authorization"))
        or conn.query_params.get("token")
    )


async def count_request(conn: HTTPConnection, principal: AuthPrincipal) -> None:
    """Count an authenticated call against its caller (the bootstrap token is not limited)."""
    if principal.kind == "bootstrap":
        return
    bucket = bucket_of(conn.scope.get("method", "GET"), conn.url.path)
    await hit(conn, bucket, f"{principal.kind}:{principal.id}")


async def _authenticate(conn: HTTPConnection, token: str | None, missing: str) -> AuthPrincipal:
    if not token:
        raise Unauthorized(missing)
    principal = await verify_credential(conn, token)
    if conn.scope["type"] == "http":
        await count_request(conn, principal)
    return principal


AccessTokenHeader = Annotated[
    str | None, Header(description="Access JWT, API key or the bootstrap token.")
]
BearerHeader = Annotated[str | None, Header(description="`Bearer <token>`: the same credentials.")]


async def authenticate(
    conn: HTTPConnection,
    x_access_token: AccessTokenHeader = None,
    authorization: BearerHeader = None,
) -> AuthPrincipal:
    """Dependency: the caller, from ``x-access-token`` or ``Authorization: Bearer``."""
    return await _authenticate(
        conn, x_access_token or _bearer(authorization), "missing x-access-token header"
    )


async def authenticate_player(
    conn: HTTPConnection,
    x_access_token: AccessTokenHeader = None,
    authorization: BearerHeader = None,
    token: Annotated[
        str | None, Query(description="The same token, for players that cannot send headers.")
    ] = None,
) -> AuthPrincipal:
    """Dependency for media a player fetches (HLS): the credentials in a header or ``?token=``."""
    return await _authenticate(
        conn,
        x_access_token or _bearer(authorization) or token,
        "missing x-access-token header (or token query parameter)",
    )


_ROLE_DEPENDENCIES: dict[Role, Any] = {}


def require_role(role: Role) -> Any:
    """A dependency yielding the principal if its role is ``role`` or higher, else 403."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if role not in _ROLE_DEPENDENCIES:

        async def dependency(
            principal: Annotated[AuthPrincipal, Depends(authenticate)],
        ) -> AuthPrincipal:
            if not principal.allows(role):
                raise Forbidden(
                    f"this needs the {role} role; your credentials have {principal.role}"
                )
            return principal

        dependency.__name__ = f"require_{role}"
        _ROLE_DEPENDENCIES[role] = dependency
    return _ROLE_DEPENDENCIES[role]


def is_operator_admin(principal: Any) -> bool:
    """An admin of the ``default`` tenant: the deployment's operator (the bootstrap admin's
    tenant). Deployment-wide views and settings (logs, runtime settings, every tenant's jobs on
    a node) are theirs; an admin of another tenant administers only that tenant."""
    return getattr(principal, "role", None) == "admin" and (
        getattr(principal, "tenant", DEFAULT_TENANT) == DEFAULT_TENANT
    )


async def require_operator_admin(
    principal: Annotated[AuthPrincipal, Depends(require_role("admin"))],
) -> Any:
    """A dependency yielding an operator admin (:func:`is_operator_admin`), else 403."""
    if not is_operator_admin(principal):
        raise Forbidden("this is deployment-wide: it needs an admin of the default tenant")
    return principal
