"""``/api/nodes``: the fleet of service nodes, from the live plane and the durable rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body

from reelhouse.api.accounts.principal import is_operator_admin
from reelhouse.api.deps import Principal, State
from reelhouse.api.system.schemas import NodesQuery
from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

log = get_logger("reelhouse.api.nodes")

router = APIRouter(prefix="/api/nodes", tags=["nodes"])


DEAD_KEEP_S = 600.0
"""Seconds a node whose heartbeat key expired stays listed as dead from the live plane's view
(after that, and for nodes that died before this API started, the durable row tells)."""


def _live_row(entry: Any) -> dict[str, Any]:
    value = entry.value
    row = {"node_id": entry.node, "service": entry.service,
           **{k: value.get(k) for k in ("host", "pid", "version", "started", "capacity",
                                        "running_jobs")}}  # fmt: skip
    row["last_seen"] = datetime.fromtimestamp(entry.last_seen, UTC)
    row["alive"] = entry.alive
    row["state"] = "running" if entry.alive else "dead"
    if entry.gone_at is not None and not entry.alive:
        row["gone"] = datetime.fromtimestamp(entry.gone_at, UTC)
    return row


@router.post("/getAll", summary="Every service node with its heartbeat and load")
async def get_all(
    state: State, principal: Principal, query: Annotated[NodesQuery | None, Body()] = None
) -> list[dict[str, Any]]:
    """Nodes newest first: ``host``, ``pid``, ``version``, ``started``, ``last_seen``,
    ``running_jobs`` and ``jobs``, ``capacity``, ``state`` (``running``, ``dead``, ``stopped``).
    Live nodes and their jobs come from the live plane (current to the second); a node whose
    heartbeat key expired is listed ``dead`` with when it was last seen; the durable ``nodes``
    rows add the nodes that stopped or died before this API replica started."""
    query = query or NodesQuery()
    now = time.time()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in list(state.live.nodes.values()):
        if not entry.alive and entry.gone_at is not None and now - entry.gone_at > DEAD_KEEP_S:
            continue
        rows[(entry.service, entry.node)] = _live_row(entry)
    mongo_filter = {"service": query.service} if query.service else {}
    try:
        cursor = state.db[Collections.NODES].find(mongo_filter).sort("last_seen", -1).limit(200)
        async for doc in cursor:
            node_id = doc.pop("_id")
            key = (str(doc.get("service")), node_id)
            if key in rows:
                if doc.get("state") == "stopped" and not rows[key]["alive"]:
                    rows[key]["state"] = "stopped"
                    rows[key]["stopped"] = doc.get("stopped")
                continue
            row = {"node_id": node_id, **doc, "alive": False}
            row["state"] = "stopped" if doc.get("state") == "stopped" else "dead"
            rows[key] = row
    except Exception as exc:  # the database away: the live plane alone answers
        log.warning("nodes_rows_unavailable", error=str(exc).splitlines()[0][:200])
    out = []
    for row in rows.values():
        if query.service and row.get("service") != query.service:
            continue
        if query.alive is not None and row["alive"] != query.alive:
            continue
        for key in ("started", "last_seen", "stopped", "gone"):
            if isinstance(row.get(key), datetime):
                row[key] = format_timestamp(row[key])
        out.append(row)
    out.sort(key=lambda r: (r["alive"], str(r.get("last_seen") or "")), reverse=True)
    _attach_jobs(state, principal, out)
    return out


def _attach_jobs(state: Any, principal: Any, rows: list[dict[str, Any]]) -> None:
    """Each node's ``jobs``: the jobs it owns in the live plane (``[{module, id, state}]``). An
    admin of the default tenant sees every tenant's, others only their own tenant's (the count,
    ``running_jobs``, stays the node's)."""
    everyone = is_operator_admin(principal)
    tenant = getattr(principal, "tenant", "default")
    by_node: dict[tuple[str, str], list[dict[str, Any]]] = {
        (str(row.get("service")), row["node_id"]): [] for row in rows
    }
    live = state.live
    for (module, job_id), owner in list(live.owners.items()):
        key = (str(owner.value.get("service")), owner.node)
        if key not in by_node:
            continue
        if not everyone and owner.value.get("tenant", "default") != tenant:
            continue
        progress = live.owner_progress(module, job_id)
        job_state = (progress[1].get("state") if progress else None) or owner.value.get("state")
        by_node[key].append({"module": module, "id": job_id, "state": job_state})
    for row in rows:
        row["jobs"] = by_node.get((str(row.get("service")), row["node_id"]), [])
