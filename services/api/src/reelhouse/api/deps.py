"""Every ``Annotated`` dependency a route takes: what the lifespan owns and who is calling.

A route names what it needs in its signature and nothing else::

    async def start(state: State, principal: Operator, body: IdBody) -> dict[str, Any]: ...

- :data:`State` (:data:`Db`, :data:`BusDep`): the connections the lifespan holds
  (:class:`~reelhouse.api.state.AppState`); :data:`Ops`: events readiness, metrics, the webhook
  worker's wake-up (:class:`~reelhouse.api.state.OpsState`).
- :data:`Principal`: the authenticated caller (any role); :data:`PlayerPrincipal` also accepts
  ``?token=`` (media a player fetches); :data:`Viewer`, :data:`Operator`, :data:`Admin`: at least
  that role, else 403; :data:`SystemAdmin`: an admin of the ``default`` tenant (deployment-wide
  views and settings). How credentials are checked: :mod:`reelhouse.api.accounts.principal`.
- :data:`IdempotencyKey`: the optional ``Idempotency-Key`` header of the create methods
  (:mod:`reelhouse.api.idempotency`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pymongo.asynchronous.database import AsyncDatabase
from starlette.requests import HTTPConnection

from reelhouse.api.accounts.principal import (
    AuthPrincipal,
    authenticate,
    authenticate_player,
    require_operator_admin,
    require_role,
)
from reelhouse.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from reelhouse.api.state import AppState, OpsState
from reelhouse.common.bus import Bus


def get_state(request: Request) -> AppState:
    return request.app.state.reelhouse


State = Annotated[AppState, Depends(get_state)]


def get_db(request: Request) -> AsyncDatabase:
    return request.app.state.reelhouse.db


Db = Annotated[AsyncDatabase, Depends(get_db)]


def get_bus(request: Request) -> Bus:
    return request.app.state.reelhouse.bus


BusDep = Annotated[Bus, Depends(get_bus)]


def get_ops(conn: HTTPConnection) -> OpsState:
    return conn.app.state.ops


Ops = Annotated[OpsState, Depends(get_ops)]

Principal = Annotated[AuthPrincipal, Depends(authenticate)]
"""The authenticated caller (any role)."""
PlayerPrincipal = Annotated[AuthPrincipal, Depends(authenticate_player)]
"""Like :data:`Principal`, also accepting ``?token=`` (media routes only)."""
Viewer = Annotated[AuthPrincipal, Depends(require_role("viewer"))]
Operator = Annotated[AuthPrincipal, Depends(require_role("operator"))]
"""Create/start/stop/update/remove jobs, streams and files."""
Admin = Annotated[AuthPrincipal, Depends(require_role("admin"))]
"""Keys, users, settings."""
SystemAdmin = Annotated[Any, Depends(require_operator_admin)]
"""An admin of the ``default`` tenant: logs, runtime settings, every tenant's jobs on a node."""

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=255,
        description="Any unique string (≤ 255 characters): a retry with the same key and body "
        "within 24 h returns the first result instead of creating a duplicate.",
    ),
]
