"""What the lifespan owns, handed to routes through ``Annotated[..., Depends()]`` aliases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from cryptography.fernet import Fernet
from fastapi import Depends, Request
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.accounts.credential_cache import CredentialCache
from reelhouse.api.jobs.stats import LiveStats
from reelhouse.api.settings import ApiSettings
from reelhouse.common.bus import Bus
from reelhouse.common.live import LivePlane
from reelhouse.common.nodes import NodeRegistry


@dataclass
class AppState:
    """Connections and facts the API holds for its lifetime."""

    settings: ApiSettings
    bus: Bus
    db: AsyncDatabase
    node: NodeRegistry
    live: LivePlane
    live_stats: LiveStats
    credentials: CredentialCache
    """Token versions and API-key lookups, forgotten on every replica when they change."""
    tool_versions: dict[str, str | None] = field(default_factory=dict)
    sealer: Fernet | None = None
    """Seals platform credentials (``REELHOUSE_SECRET_KEY``, ``reelhouse.common.credentials``)."""


def get_state(request: Request) -> AppState:
    return request.app.state.reelhouse


State = Annotated[AppState, Depends(get_state)]


def get_db(request: Request) -> AsyncDatabase:
    return request.app.state.reelhouse.db


Db = Annotated[AsyncDatabase, Depends(get_db)]


def get_bus(request: Request) -> Bus:
    return request.app.state.reelhouse.bus


BusDep = Annotated[Bus, Depends(get_bus)]
