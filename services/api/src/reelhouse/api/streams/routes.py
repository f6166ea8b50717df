"""``/api/streams/*``: the Streams module, shaped as ``seeds/streams-api.txt``.

A stream row is a named identity above a transport entity; ``active`` means "monitored": a
prober claims an active row that has a ``stream_url`` and keeps its ``status`` and
``stream_meta_data`` current (``reelhouse.prober.monitor``). ``getStreamInfo`` asks the prober
(NATS micro service) to ffprobe a URL; the API itself never runs ffprobe.
Rows as responses show them, create, start/stop and the hints: :mod:`reelhouse.api.streams.service`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.streams import service
from reelhouse.common.contracts.base import ObjectIdStr, utcnow
from reelhouse.common.contracts.streams import (
    ProbeReply,
    ProbeRequest,
    SetStreamInfoBody,
    StreamIdBody,
    StreamIn,
    StreamInfoBody,
    StreamListBody,
    StreamUpdate,
)
from reelhouse.common.errors import NotFound, ValidationFailed
from reelhouse.common.logging import get_logger
from reelhouse.common.micro import call
from reelhouse.common.mongo import Collections
from reelhouse.common.netpolicy import validate_url

router = APIRouter(prefix="/api/streams", tags=["streams"])
log = get_logger("reelhouse.api.streams")


@router.post(
    "/create",
    summary="Create a stream row",
    responses=documented(
        409,
        s409="CONFLICT: this Idempotency-Key was used with another body, or its first "
        "call is still running",
    ),
)
async def create(
    state: State,
    principal: Operator,
    body: StreamIn,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    key = idempotency_key
    run = functools.partial(service.create, state, tenant_of(principal), body)
    return await idempotency.once(state.db, principal, "stream", key, body, response, run)


@router.post("/getCount", summary="How many stream rows match")
async def get_count(
    state: State, principal: Principal, body: Annotated[StreamListBody | None, Body()] = None
) -> dict[str, int]:
    query = service.list_query(tenant_of(principal), body or StreamListBody())
    return {"count": await state.db[Collections.STREAMS].count_documents(query)}


@router.post("/getAll", summary="Stream rows (a bare array)")
async def get_all(
    state: State, principal: Principal, body: Annotated[StreamListBody | None, Body()] = None
) -> list[dict[str, Any]]:
    body = body or StreamListBody()
    query = service.list_query(tenant_of(principal), body)
    sort = [("_id" if k == "id" else k, v) for k, v in body.sort.items()] or [("created", 1)]
    if all(k != "_id" for k, _ in sort):
        sort.append(("_id", 1))  # stable order among equal keys (pages do not overlap)
    cursor = state.db[Collections.STREAMS].find(query).sort(sort).skip(body.skip)
    if body.limit:
        cursor = cursor.limit(body.limit)
    return [service.present(doc) for doc in await cursor.to_list(None)]


@router.post("/getById", summary="One stream row")
async def get_by_id(state: State, principal: Principal, body: StreamIdBody) -> dict[str, Any]:
    return await service.present_with_urls(
        state, await service.load(state.db, tenant_of(principal), body.id)
    )


@router.post("/update", summary="Change a stream row (the fields sent; others are kept)")
async def update(state: State, principal: Operator, body: StreamUpdate) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await service.load(state.db, tenant, body.id)
    if body.entity_id is not None or body.module_name is not None:
        await service.server_of(state, tenant, body.module_name or doc["module_name"],
                      body.entity_id or doc["entity_id"])  # fmt: skip
    await service.check_url(state, body.stream_url)
    changes = body.changes()
    await state.db[Collections.STREAMS].update_one(
        {"_id": doc["_id"], "tenant": tenant},
        {"$set": {**changes, "modified": utcnow()}, "$inc": {"generation": 1}},
    )
    doc = await service.load(state.db, tenant, body.id)
    log.info("stream_updated", stream_id=body.id, fields=sorted(changes))
    await service.hint(state, "reload" if doc.get("active") else "stop", body.id)
    await service.ingest_hint(state, "reload", body.id)
    return await service.present_with_urls(state, doc)


@router.post("/setStreamInfo", summary="Store discovered info for a flow (stream_id, role, port)")
async def set_stream_info(
    state: State, principal: Operator, body: SetStreamInfoBody
) -> dict[str, bool]:
    tenant = tenant_of(principal)
    await service.check_url(state, body.stream_url)
    query: dict[str, Any] = {"tenant": tenant, "stream_id": body.stream_id, "role_name": body.role}
    if body.port is not None:
        # A row already bound to another port is another flow with the same stream id.
        query["$or"] = [{"stream_info.port": {"$exists": False}}, {"stream_info.port": None},
                        {"stream_info.port": body.port}]  # fmt: skip
    info = {
        "short_stream_id": body.short_stream_id or body.stream_id.rsplit("/", 1)[-1],
        "port": body.port,
        "receiver_port": body.receiver_port,
        "updated": utcnow(),
    }
    fields: dict[str, Any] = {"stream_info": info, "modified": info["updated"]}
    if body.stream_url is not None:
        fields["stream_url"] = body.stream_url
    if body.stream_meta_data is not None:
        fields["stream_meta_data"] = body.stream_meta_data
    if body.audio_settings is not None:
        fields["audio_settings"] = body.audio_settings.model_dump(mode="json")
    streams = state.db[Collections.STREAMS]
    target = await streams.find_one(query, {"_id": 1}, sort=[("created", 1)])
    if target is None:
        raise NotFound(
            f"no {body.role} stream with stream_id {body.stream_id!r}"
            + (f" on port {body.port}" if body.port is not None else ""),
            field="stream_id",
        )
    update: dict[str, Any] = {"$set": fields}
    if body.stream_url is not None:
        update["$inc"] = {"generation": 1}  # a monitor restarts with the new URL
    await streams.update_one({"_id": target["_id"]}, update)
    log.info("stream_info_set", stream_id=str(target["_id"]), port=body.port)
    if body.stream_url is not None:
        await service.hint(state, "reload", str(target["_id"]))
    return {"success": True}


@router.delete("/remove", summary="Delete a stream row (monitoring ends)")
async def remove(
    state: State,
    principal: Operator,
    body: Annotated[StreamIdBody | None, Body()] = None,
    id: Annotated[
        ObjectIdStr | None,
        Query(description="The stream row's id; or `id` in the body (one of them is required)."),
    ] = None,
) -> dict[str, bool]:
    # OpenAPI cannot say "this query parameter or that body field": the schema shows both as
    # optional, and a request with neither is a 400 naming `id`.
    stream_id = body.id if body is not None else id
    if stream_id is None:
        raise ValidationFailed("id: a 24-hex stream id is required", field="id")
    tenant = tenant_of(principal)
    doc = await service.load(state.db, tenant, stream_id)
    await state.db[Collections.STREAMS].delete_one({"_id": doc["_id"], "tenant": tenant})
    log.info("stream_removed", stream_id=stream_id)
    await service.hint(state, "stop", stream_id)
    await service.ingest_hint(state, "stop", stream_id)
    return {"success": True}


@router.post("/start", summary="Start monitoring the stream (active: true)")
async def start(state: State, principal: Operator, body: StreamIdBody) -> dict[str, Any]:
    return await service.set_active(state, principal, body.id, True)


@router.post("/stop", summary="Stop monitoring the stream (active: false)")
async def stop(state: State, principal: Operator, body: StreamIdBody) -> dict[str, Any]:
    return await service.set_active(state, principal, body.id, False)


@router.post(
    "/getStreamInfo",
    summary="ffprobe a live URL (streams and format); operator role",
    description="Probing makes the engine connect out, so it needs the operator role, and the "
    "URL's resolved address must pass the address policy (REELHOUSE_PROBE_ALLOW_NETWORKS): a "
    "refused one is a 400 with `reason: forbidden_address`. A failed probe is a 502/504 whose "
    "`reason` is its class (`unreachable`, `refused`, `timeout`, `not_media`, "
    "`forbidden_address`), never the source's own text.",
    responses=documented(502, 504),
)
async def get_stream_info(
    state: State, _principal: Operator, body: StreamInfoBody
) -> dict[str, Any]:
    # Checked here and again in the prober (which also pins the address it checked).
    await validate_url(
        state.settings.net_policy(), body.stream_url, role="input", field="stream_url"
    )
    timeout_s = body.timeout or state.settings.probe_timeout_s
    request = ProbeRequest(url=body.stream_url, timeout_s=timeout_s)
    data = await call(
        state.bus, state.bus.subjects.probe(), request, timeout_s=timeout_s + 1, what="the prober"
    )
    reply = ProbeReply.model_validate_json(data)
    return {"streams": reply.streams, "format": reply.format}
