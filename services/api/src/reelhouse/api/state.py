"""What the app holds for its lifetime; routes reach it through :mod:`reelhouse.api.deps`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.accounts.credential_cache import CredentialCache
from reelhouse.api.jobs.stats import LiveStats
from reelhouse.api.settings import ApiSettings
from reelhouse.api.system.telemetry import ApiMetrics
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


@dataclass
class OpsState:
    """Events stream readiness, the webhook worker's wake-up, metrics, cached tool facts; kept on
    ``app.state.ops``, built with the app (before the lifespan runs: the middleware needs it)."""

    metrics: ApiMetrics
    events_ready: asyncio.Event = field(default_factory=asyncio.Event)
    webhook_wake: asyncio.Event = field(default_factory=asyncio.Event)
    dependencies: dict[str, Any] | None = None
    dependencies_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
