"""What the issue-7 parts of the API (events, webhooks, operator endpoints) hold for the app's
lifetime, kept on ``app.state.ops`` next to :class:`~reelhouse.api.state.AppState`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from reelhouse.api.accounts.principal import Admin
from reelhouse.api.system.telemetry import ApiMetrics
from reelhouse.common.contracts.messages import DEFAULT_TENANT
from reelhouse.common.errors import Forbidden


@dataclass
class OpsState:
    """Events stream readiness, the webhook worker's wake-up, metrics, cached tool facts."""

    metrics: ApiMetrics
    events_ready: asyncio.Event = field(default_factory=asyncio.Event)
    webhook_wake: asyncio.Event = field(default_factory=asyncio.Event)
    dependencies: dict[str, Any] | None = None
    dependencies_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def get_ops(conn: HTTPConnection) -> OpsState:
    return conn.app.state.ops


Ops = Annotated[OpsState, Depends(get_ops)]


def is_operator_admin(principal: Any) -> bool:
    """An admin of the ``default`` tenant: the deployment's operator (the bootstrap admin's
    tenant). Deployment-wide views and settings (logs, runtime settings, every tenant's jobs on
    a node) are theirs; an admin of another tenant administers only that tenant."""
    return getattr(principal, "role", None) == "admin" and (
        getattr(principal, "tenant", DEFAULT_TENANT) == DEFAULT_TENANT
    )


async def require_operator_admin(principal: Admin) -> Any:
    if not is_operator_admin(principal):
        raise Forbidden("this is deployment-wide: it needs an admin of the default tenant")
    return principal


SystemAdmin = Annotated[Any, Depends(require_operator_admin)]
