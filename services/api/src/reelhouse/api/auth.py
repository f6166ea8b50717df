"""Authentication. For now one admin credential: the bootstrap token (full auth comes later)."""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from reelhouse.api.settings import ApiSettings
from reelhouse.common.errors import Unauthorized
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.auth")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("bootstrap_token_generated", path=str(path))
    return token


def require_token(
    request: Request,
    x_access_token: Annotated[str | None, Header(description="JWT or API key.")] = None,
) -> str:
    """Dependency: the request carries a valid ``x-access-token``; returns the principal."""
    if not x_access_token:
        raise Unauthorized("missing x-access-token header")
    return _principal(request, x_access_token)


def _principal(request: Request, token: str) -> str:
    expected: str = request.app.state.bootstrap_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("invalid access token")
    return "bootstrap-admin"


def require_token_or_query(
    request: Request,
    x_access_token: Annotated[str | None, Header(description="JWT or API key.")] = None,
    token: Annotated[
        str | None, Query(description="The same token, for players that cannot send headers.")
    ] = None,
) -> str:
    """Dependency for media a player fetches (HLS): the token in the header or ``?token=``."""
    if not (x_access_token or token):
        raise Unauthorized("missing x-access-token header (or token query parameter)")
    return _principal(request, x_access_token or token or "")


Principal = Annotated[str, Depends(require_token)]
PlayerPrincipal = Annotated[str, Depends(require_token_or_query)]
"""Like :data:`Principal`, also accepting ``?token=`` (media routes only)."""
