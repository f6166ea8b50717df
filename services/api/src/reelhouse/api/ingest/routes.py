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
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Response
from pydantic import BaseModel

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.ingest import service
from reelhouse.api.ingest.service import (
    RTMP,
    SRT,
    ServerKind,
    load,
    present,
    stat_rows,
)
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.ingest import (
    ServerListBody,
    StatBody,
)
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.ingest")


def make_router(kind: ServerKind) -> APIRouter:
    """The nine routes of one server module."""
    router = APIRouter(prefix=f"/api/{kind.path}", tags=[kind.path])
    create_model = kind.create
    update_model = kind.update

    async def _create(state: AppState, tenant: str, body: BaseModel) -> dict[str, Any]:
        data = body.model_dump(mode="json")
        await service.check_port(state, kind, data["server_port"])
        now = utcnow()
        doc = {"_id": ObjectId(), "tenant": tenant, **data, "generation": 0,
               "created": now, "modified": now}  # fmt: skip
        await state.db[kind.collection].insert_one(doc)
        log.info("ingest_server_created", proto=kind.proto, server_id=str(doc["_id"]),
                 port=doc["server_port"], active=doc["active"])  # fmt: skip
        if doc["active"]:
            await service.hint(state, "start", str(doc["_id"]))
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
        query = service.list_query(tenant_of(principal), body or ServerListBody())
        return {"count": await state.db[kind.collection].count_documents(query)}

    @router.post("/getAll", summary=f"{kind.label} servers (a bare array)")
    async def get_all(
        state: State, principal: Principal, body: Annotated[ServerListBody | None, Body()] = None
    ) -> list[dict[str, Any]]:
        body = body or ServerListBody()
        query = service.list_query(tenant_of(principal), body)
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
            await service.check_port(state, kind, changes["server_port"], exclude=doc["_id"])
        await state.db[kind.collection].update_one(
            {"_id": doc["_id"], "tenant": tenant},
            {"$set": {**changes, "modified": utcnow()}, "$inc": {"generation": 1}},
        )
        doc = await load(state, kind, tenant, server_id)
        log.info("ingest_server_updated", server_id=server_id, fields=sorted(changes))
        await service.hint(state, "reload" if doc.get("active") else "stop", server_id)
        return present(kind, doc)

    async def _set_active(state: AppState, tenant: str, server_id: str, active: bool) -> dict:
        doc = await load(state, kind, tenant, server_id)
        await state.db[kind.collection].update_one(
            {"_id": doc["_id"], "tenant": tenant},
            {"$set": {"active": active, "modified": utcnow()}},
        )
        log.info("ingest_server_started" if active else "ingest_server_stopped",
                 server_id=server_id)  # fmt: skip
        await service.hint(state, "start" if active else "stop", server_id)
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
        await service.hint(state, "stop", body.id)
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
