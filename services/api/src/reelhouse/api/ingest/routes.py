"""``/api/srt-servers/*`` and ``/api/rtmp-servers/*``: the ingest servers (issue 21,
docs/INGEST.md).

A server is a port on the ingest node that encoders push into. The API stores desired state in
MongoDB (``srt_servers``, ``rtmp_servers``) and hints ``<p>.cmd.ingest.<verb>``; the ingest
service opens or closes the port and writes the server's ``status`` (``listening`` / ``failed``).
``getStat`` answers from the live plane (``ingeststats.<server_id>``), never from MongoDB.

No ``from __future__ import annotations`` here: the routes are made per protocol in
:func:`make_router`, and FastAPI must see the body classes themselves, not names it would look
up in this module.
"""

import functools
from dataclasses import dataclass
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ValidationError

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import format_timestamp, is_object_id, utcnow
from reelhouse.common.contracts.ingest import (
    IngestStats,
    RtmpServerIn,
    RtmpServerUpdate,
    ServerListBody,
    SrtServerIn,
    SrtServerUpdate,
    StatBody,
)
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.errors import Conflict, NotFound, ValidationFailed
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Verb

log = get_logger("reelhouse.api.ingest")

_SRT_STAT_FIELDS = (
    "server_id", "stream_id", "role", "remote_address", "connected_at", "rtt_ms",
    "recv_rate_kbits", "send_rate_kbits", "link_capacity_kbits", "pkt_recv_loss", "pkt_retrans",
    "pkt_recv_drop", "pkt_send_loss", "recv_buffer_ms", "send_buffer_ms", "latency_ms", "bytes",
    "bitrate_kbits", "readers", "held", "gaps", "gap_ms_total",
)  # fmt: skip
_RTMP_STAT_FIELDS = (
    "server_id", "stream_id", "role", "remote_address", "connected_at", "bytes", "bitrate_kbits",
    "readers", "held", "gaps", "gap_ms_total",
)  # fmt: skip
"""Per connection; ``held`` (its contribution has no publisher now and its readers are held),
``gaps`` and ``gap_ms_total`` (publisher gaps so far) are its contribution's."""


@dataclass(frozen=True)
class ServerKind:
    """One server module as its routes see it."""

    proto: str
    path: str
    collection: str
    label: str
    setting: str
    fields: tuple[str, ...]
    create: type[BaseModel]
    update: type[BaseModel]
    stat_fields: tuple[str, ...]


SRT = ServerKind(
    proto="srt",
    path="srt-servers",
    collection=Collections.SRT_SERVERS,
    label="SRT",
    setting="REELHOUSE_INGEST_SRT_PORTS",
    fields=("server_name", "server_port", "server_latency", "server_passphrase", "node"),
    create=SrtServerIn,
    update=SrtServerUpdate,
    stat_fields=_SRT_STAT_FIELDS,
)
RTMP = ServerKind(
    proto="rtmp",
    path="rtmp-servers",
    collection=Collections.RTMP_SERVERS,
    label="RTMP",
    setting="REELHOUSE_INGEST_RTMP_PORTS",
    fields=("server_name", "server_port", "node"),
    create=RtmpServerIn,
    update=RtmpServerUpdate,
    stat_fields=_RTMP_STAT_FIELDS,
)
KIND_OF_MODULE = {"MODULE_SRT_SERVERS": SRT, "MODULE_RTMP_SERVERS": RTMP}


def present(kind: ServerKind, doc: dict[str, Any]) -> dict[str, Any]:
    """A server as responses show it (``status`` only while it is active)."""
    out: dict[str, Any] = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    for key in kind.fields:
        out[key] = doc.get(key, "" if key in ("node", "server_passphrase") else None)
    out["active"] = bool(doc.get("active"))
    status = doc.get("status") if doc.get("active") else None
    out["status"] = (
        {k: status.get(k) for k in ("state", "node", "error", "since")} if status else None
    )
    out["created"] = format_timestamp(doc["created"])
    out["modified"] = format_timestamp(doc["modified"])
    out["success"] = True
    return out


async def load(state: AppState, kind: ServerKind, tenant: str, server_id: str) -> dict[str, Any]:
    doc = await state.db[kind.collection].find_one({"_id": ObjectId(server_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"{kind.label} server {server_id} not found", field="id")
    return doc


async def _hint(state: AppState, verb: Verb, server_id: str) -> None:
    """Tell the ingest nodes at once; they reconcile on their timer anyway."""
    try:
        command = JobCommand(module="ingest", verb=verb, job_id=server_id)
        await state.bus.publish(state.bus.subjects.command("ingest", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", server_id=server_id, verb=verb, error=str(exc))


async def _check_port(
    state: AppState, kind: ServerKind, port: int, exclude: ObjectId | None = None
) -> None:
    """The port lies in the deployment's range and no other server of the protocol uses it
    (ports are the host's, so every tenant's servers count)."""
    low, high = state.settings.port_range(kind.proto)
    if not low <= port <= high:
        raise ValidationFailed(
            f"server_port: {port} is outside the {kind.label} server port range {low}-{high} "
            f"({kind.setting})",
            field="server_port",
        )
    if kind.proto == "srt" and port == state.settings.ingest_fanout_port:
        raise ValidationFailed(
            f"server_port: {port} is the ingest node's fan-out port (REELHOUSE_INGEST_FANOUT_PORT)",
            field="server_port",
        )
    query: dict[str, Any] = {"server_port": port}
    for doc in await state.db[kind.collection].find(query, {"_id": 1}).to_list(None):
        if doc["_id"] != exclude:
            raise Conflict(
                f"server_port: {port} is used by {kind.label} server {doc['_id']}",
                field="server_port",
            )


def _list_query(tenant: str, body: ServerListBody) -> dict[str, Any]:
    query: dict[str, Any] = {"tenant": tenant}
    for key, value in body.filter.items():
        if key in ("id", "_id"):
            query["_id"] = ObjectId(value) if is_object_id(str(value)) else None
        else:
            query[key] = value
    return query


def stat_rows(state: AppState, kind: ServerKind, tenant: str, server_id: str | None) -> list[dict]:
    """getStat: one entry per live connection of the tenant's servers of this protocol."""
    rows: list[dict[str, Any]] = []
    for sid, (_, value) in list(state.live.ingest_stats.items()):
        if server_id is not None and sid != server_id:
            continue
        try:
            stats = IngestStats.model_validate(value)
        except ValidationError:
            continue
        if stats.tenant != tenant or stats.proto != kind.proto:
            continue
        for conn in stats.conns:
            data = conn.model_dump(mode="json")
            rows.append({key: data.get(key) for key in kind.stat_fields})
    rows.sort(key=lambda r: (r["server_id"], r["stream_id"], r["role"], r["connected_at"] or 0))
    return rows


def make_router(kind: ServerKind) -> APIRouter:
    """The nine routes of one server module."""
    router = APIRouter(prefix=f"/api/{kind.path}", tags=[kind.path])
    create_model = kind.create
    update_model = kind.update

    async def _create(state: AppState, tenant: str, body: BaseModel) -> dict[str, Any]:
        data = body.model_dump(mode="json")
        await _check_port(state, kind, data["server_port"])
        now = utcnow()
        doc = {"_id": ObjectId(), "tenant": tenant, **data, "generation": 0,
               "created": now, "modified": now}  # fmt: skip
        await state.db[kind.collection].insert_one(doc)
        log.info("ingest_server_created", proto=kind.proto, server_id=str(doc["_id"]),
                 port=doc["server_port"], active=doc["active"])  # fmt: skip
        if doc["active"]:
            await _hint(state, "start", str(doc["_id"]))
        return present(kind, doc)

    @router.post(
        "/create",
        summary=f"Create an {kind.label} server (a port encoders push into)",
        responses=documented(
            409,
            s409="CONFLICT: the port is used by another server, or this Idempotency-Key was "
            "used with another body, or its first call is still running",
        ),
    )
    async def create(
        state: State,
        principal: Operator,
        body: create_model,  # type: ignore[valid-type]
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        run = functools.partial(_create, state, tenant_of(principal), body)
        key = idempotency_key
        return await idempotency.once(state.db, principal, kind.path, key, body, response, run)

    @router.post("/getCount", summary=f"How many {kind.label} servers match")
    async def get_count(
        state: State, principal: Principal, body: Annotated[ServerListBody | None, Body()] = None
    ) -> dict[str, int]:
        query = _list_query(tenant_of(principal), body or ServerListBody())
        return {"count": await state.db[kind.collection].count_documents(query)}

    @router.post("/getAll", summary=f"{kind.label} servers (a bare array)")
    async def get_all(
        state: State, principal: Principal, body: Annotated[ServerListBody | None, Body()] = None
    ) -> list[dict[str, Any]]:
        body = body or ServerListBody()
        query = _list_query(tenant_of(principal), body)
        sort = [("_id" if k == "id" else k, v) for k, v in body.sort.items()] or [("created", 1)]
        if all(k != "_id" for k, _ in sort):
            sort.append(("_id", 1))
        cursor = state.db[kind.collection].find(query).sort(sort).skip(body.skip)
        if body.limit:
            cursor = cursor.limit(body.limit)
        return [present(kind, doc) for doc in await cursor.to_list(None)]

    @router.post("/getById", summary=f"One {kind.label} server")
    async def get_by_id(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
        return present(kind, await load(state, kind, tenant_of(principal), body.id))

    @router.post(
        "/update",
        summary=f"Change an {kind.label} server (the fields sent); an open port reopens",
        responses=documented(409, s409="CONFLICT: the port is used by another server"),
    )
    async def update(
        state: State,
        principal: Operator,
        body: update_model,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        tenant = tenant_of(principal)
        server_id = body.id  # type: ignore[attr-defined]
        doc = await load(state, kind, tenant, server_id)
        changes = body.model_dump(mode="json", exclude={"id"}, exclude_none=True)
        if "server_port" in changes:
            await _check_port(state, kind, changes["server_port"], exclude=doc["_id"])
        await state.db[kind.collection].update_one(
            {"_id": doc["_id"], "tenant": tenant},
            {"$set": {**changes, "modified": utcnow()}, "$inc": {"generation": 1}},
        )
        doc = await load(state, kind, tenant, server_id)
        log.info("ingest_server_updated", server_id=server_id, fields=sorted(changes))
        await _hint(state, "reload" if doc.get("active") else "stop", server_id)
        return present(kind, doc)

    async def _set_active(state: AppState, tenant: str, server_id: str, active: bool) -> dict:
        doc = await load(state, kind, tenant, server_id)
        await state.db[kind.collection].update_one(
            {"_id": doc["_id"], "tenant": tenant},
            {"$set": {"active": active, "modified": utcnow()}},
        )
        log.info("ingest_server_started" if active else "ingest_server_stopped",
                 server_id=server_id)  # fmt: skip
        await _hint(state, "start" if active else "stop", server_id)
        return present(kind, await load(state, kind, tenant, server_id))

    @router.post("/start", summary=f"Open the {kind.label} server (active: true)")
    async def start(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
        return await _set_active(state, tenant_of(principal), body.id, True)

    @router.post("/stop", summary=f"Close the {kind.label} server and its connections")
    async def stop(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
        return await _set_active(state, tenant_of(principal), body.id, False)

    @router.delete("/remove", summary=f"Close and delete the {kind.label} server")
    async def remove(state: State, principal: Operator, body: IdBody) -> dict[str, bool]:
        tenant = tenant_of(principal)
        doc = await load(state, kind, tenant, body.id)
        await state.db[kind.collection].delete_one({"_id": doc["_id"], "tenant": tenant})
        log.info("ingest_server_removed", server_id=body.id)
        await _hint(state, "stop", body.id)
        return {"success": True}

    @router.post(
        "/getStat",
        summary=f"Live connections of the {kind.label} servers, with transport statistics",
    )
    async def get_stat(
        state: State, principal: Principal, body: Annotated[StatBody | None, Body()] = None
    ) -> list[dict[str, Any]]:
        tenant = tenant_of(principal)
        server_id = body.id if body is not None else None
        if server_id is not None:
            await load(state, kind, tenant, server_id)
        return stat_rows(state, kind, tenant, server_id)

    return router


srt_router = make_router(SRT)
rtmp_router = make_router(RTMP)
