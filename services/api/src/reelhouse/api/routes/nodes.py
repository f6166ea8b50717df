"""``/api/nodes``: the fleet of service nodes, as they heartbeat into the ``nodes`` collection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from reelhouse.api.auth import Principal
from reelhouse.api.state import State
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/nodes", tags=["nodes"])


@router.post("/getAll", summary="Every service node with its heartbeat and load")
async def get_all(state: State, _: Principal) -> list[dict[str, Any]]:
    """Nodes newest first; ``alive`` is false once a node missed three heartbeats or stopped."""
    cutoff = utcnow() - timedelta(seconds=3 * state.settings.node_heartbeat_s)
    rows = []
    cursor = state.db[Collections.NODES].find({}).sort("last_seen", -1).limit(1000)
    async for doc in cursor:
        node = {"node_id": doc.pop("_id"), **doc}
        node["alive"] = node.get("state") == "running" and node["last_seen"] >= cutoff
        for key in ("started", "last_seen", "stopped"):
            if key in node:
                node[key] = format_timestamp(node[key])
        rows.append(node)
    return rows
