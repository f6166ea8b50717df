"""``/api/nodes``: the fleet of service nodes, as they heartbeat into the ``nodes`` collection."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from reelhouse.api.auth import Principal
from reelhouse.api.ops import is_operator_admin
from reelhouse.api.state import State
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Service

router = APIRouter(prefix="/api/nodes", tags=["nodes"])


class NodesQuery(BaseModel):
    """Optional filters of ``getAll``."""

    model_config = ConfigDict(extra="forbid")

    service: Service | None = Field(None, description="Only nodes of this service.")
    alive: bool | None = Field(None, description="Only nodes that are (or are not) alive.")


@router.post("/getAll", summary="Every service node with its heartbeat and load")
async def get_all(
    state: State, principal: Principal, query: Annotated[NodesQuery | None, Body()] = None
) -> list[dict[str, Any]]:
    """Nodes newest first: ``host``, ``pid``, ``version``, ``started``, ``last_seen``,
    ``running_jobs`` and ``jobs``, ``capacity``, ``state``; ``alive`` is false once a node missed
    three heartbeats or stopped."""
    query = query or NodesQuery()
    cutoff = utcnow() - timedelta(seconds=3 * state.settings.node_heartbeat_s)
    mongo_filter = {"service": query.service} if query.service else {}
    rows = []
    cursor = state.db[Collections.NODES].find(mongo_filter).sort("last_seen", -1).limit(1000)
    async for doc in cursor:
        node = {"node_id": doc.pop("_id"), **doc}
        node["alive"] = node.get("state") == "running" and node["last_seen"] >= cutoff
        if query.alive is not None and node["alive"] != query.alive:
            continue
        for key in ("started", "last_seen", "stopped"):
            if key in node:
                node[key] = format_timestamp(node[key])
        rows.append(node)
    await _attach_jobs(state, principal, rows)
    return rows


async def _attach_jobs(state: Any, principal: Any, rows: list[dict[str, Any]]) -> None:
    """Each node's ``jobs``: the jobs it holds a lease on (``[{module, id, state}]``). An admin
    of the default tenant sees every tenant's, others only their own tenant's (the count,
    ``running_jobs``, stays the node's)."""
    ids = [row["node_id"] for row in rows]
    by_node: dict[str, list[dict[str, Any]]] = {node_id: [] for node_id in ids}
    if not ids:
        return
    scope: dict[str, Any] = {"runtime.node": {"$in": ids}}
    if not is_operator_admin(principal):
        scope["tenant"] = getattr(principal, "tenant", "default")
    for module, coll in (
        ("recording", Collections.RECORDINGS),
        ("restream", Collections.RESTREAMS),
    ):
        cursor = state.db[coll].find(scope, {"runtime.node": 1, "runtime.state": 1}).limit(10_000)
        async for doc in cursor:
            runtime = doc.get("runtime") or {}
            by_node.setdefault(runtime.get("node"), []).append(
                {"module": module, "id": str(doc["_id"]), "state": runtime.get("state")}
            )
    for row in rows:
        row["jobs"] = by_node.get(row["node_id"], [])
