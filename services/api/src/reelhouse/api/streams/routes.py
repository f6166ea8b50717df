"""``/api/streams/*``: the Streams module, shaped as ``seeds/streams-api.txt``.

A stream row is a named identity above a transport entity; ``active`` means "monitored": a
prober claims an active row that has a ``stream_url`` and keeps its ``status`` and
``stream_meta_data`` current (``reelhouse.prober.monitor``). ``getStreamInfo`` asks the prober
(NATS micro service) to ffprobe a URL; the API itself never runs ffprobe.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Body, Query, Response
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import AuthPrincipal, tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import ObjectIdStr, format_timestamp, is_object_id, utcnow
from reelhouse.common.contracts.messages import JobCommand
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
from reelhouse.common.ingest import fanout_url as ingest_fanout_url
from reelhouse.common.ingest import publish_url, server_read_url, stream_name
from reelhouse.common.logging import get_logger
from reelhouse.common.micro import call
from reelhouse.common.mongo import Collections
from reelhouse.common.netpolicy import validate_url
from reelhouse.common.subjects import Verb

router = APIRouter(prefix="/api/streams", tags=["streams"])
log = get_logger("reelhouse.api.streams")

MODULE = "stream"

_FIELDS = (
    "name", "role_name", "host", "stream_id", "entity_id", "entityModel", "module_name",
    "stream_url", "stream_meta_data", "audio_settings", "stream_info", "passphrase",
)  # fmt: skip
_DEFAULTS: dict[str, Any] = {"host": "", "stream_url": "", "stream_meta_data": {},
                             "passphrase": ""}  # fmt: skip
_SERVER_COLLECTIONS = {"MODULE_SRT_SERVERS": (Collections.SRT_SERVERS, "SRT"),
                       "MODULE_RTMP_SERVERS": (Collections.RTMP_SERVERS, "RTMP")}  # fmt: skip


def _present_status(doc: dict[str, Any]) -> dict[str, Any] | None:
    status = doc.get("status")
    if not status or not doc.get("active"):
        return None  # not monitored (a stopped row's last status is history, not news)
    return {
        "state": status.get("state"),
        "since": format_timestamp(status["since"]) if status.get("since") else None,
        "node": status.get("node"),
        "error": status.get("error"),
    }


async def _server(state: AppState, tenant: str, module_name: str, entity_id: str) -> dict[str, Any]:
    """The ingest server a row sits on: it must exist in the tenant (400 naming entity_id)."""
    collection, label = _SERVER_COLLECTIONS[module_name]
    server = await state.db[collection].find_one({"_id": ObjectId(entity_id), "tenant": tenant})
    if server is None:
        raise ValidationFailed(
            f"entity_id: no {label} server {entity_id} (create one with "
            f"/api/{label.lower()}-servers/create)",
            field="entity_id",
        )
    return server


def _urls(state: AppState, doc: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
    """``publish_url`` and ``read_url`` of a row on an ingest server (None without one)."""
    if server is None:
        return {"publish_url": None, "read_url": None}
    proto = "srt" if doc.get("module_name") == "MODULE_SRT_SERVERS" else "rtmp"
    host = state.settings.public_host()
    port = int(server.get("server_port") or 0)
    name = stream_name(proto, str(doc.get("stream_id", "")))
    own = str(doc.get("passphrase") or "")
    if proto == "srt":
        secret = own or str(server.get("server_passphrase") or "")
        latency = int(server.get("server_latency") or 120)
        return {
            "publish_url": publish_url("srt", host=host, port=port, name=name, passphrase=secret),
            "read_url": server_read_url(
                host=host, port=port, name=name, passphrase=secret, latency_ms=latency
            ),
        }
    fanout = f"{host}:{state.settings.ingest_fanout_port}"
    return {
        "publish_url": publish_url("rtmp", host=host, port=port, name=name, passphrase=own),
        "read_url": ingest_fanout_url(fanout, str(server["_id"]), name),
    }


async def _present_with_urls(state: AppState, doc: dict[str, Any]) -> dict[str, Any]:
    out = _present(doc)
    module = str(doc.get("module_name", ""))
    server = None
    if module in _SERVER_COLLECTIONS and is_object_id(str(doc.get("entity_id", ""))):
        collection = _SERVER_COLLECTIONS[module][0]
        server = await state.db[collection].find_one(
            {"_id": ObjectId(str(doc["entity_id"])), "tenant": doc.get("tenant")}
        )
    out.update(_urls(state, doc, server))
    return out


async def _ingest_hint(state: AppState, verb: Verb, stream_id: str) -> None:
    """A row changed: the ingest nodes drop their cached rows (and contributions no active
    row allows any more)."""
    try:
        command = JobCommand(module=MODULE, verb=verb, job_id=stream_id)
        await state.bus.publish(state.bus.subjects.command("ingest", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", stream_id=stream_id, verb=verb, error=str(exc))


def _present(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    for key in _FIELDS:
        out[key] = doc.get(key, _DEFAULTS.get(key))
    if out["stream_info"]:
        info = dict(out["stream_info"])
        if info.get("updated"):
            info["updated"] = format_timestamp(info["updated"])
        out["stream_info"] = info
    out["status"] = _present_status(doc)
    out["created"] = format_timestamp(doc["created"])
    out["modified"] = format_timestamp(doc["modified"])
    out["active"] = bool(doc.get("active"))
    out["success"] = True
    return out


async def _load(db: AsyncDatabase, tenant: str, stream_id: str) -> dict[str, Any]:
    doc = await db[Collections.STREAMS].find_one({"_id": ObjectId(stream_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"stream {stream_id} not found", field="id")
    return doc


async def _hint(state: AppState, verb: Verb, stream_id: str) -> None:
    """Tell probers at once; if NATS is away they reconcile on their timer anyway."""
    try:
        command = JobCommand(module=MODULE, verb=verb, job_id=stream_id)
        await state.bus.publish(state.bus.subjects.command("prober", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", stream_id=stream_id, verb=verb, error=str(exc))


def _list_query(tenant: str, body: StreamListBody) -> dict[str, Any]:
    query: dict[str, Any] = {"tenant": tenant}
    for key, value in body.filter.items():
        if key in ("id", "_id"):
            query["_id"] = ObjectId(value) if is_object_id(str(value)) else None
        elif key == "search":
            if value == "" or isinstance(value, bool):
                continue
            pattern = {"$regex": re.escape(str(value)), "$options": "i"}
            query["$or"] = [{"name": pattern}, {"stream_id": pattern}]
        else:
            query[key] = value
    return query


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
    run = functools.partial(_create, state, tenant_of(principal), body)
    return await idempotency.once(state.db, principal, "stream", key, body, response, run)


async def _check_url(state: AppState, url: str | None) -> None:
    """A stream URL is probed by the monitors: the address policy applies when it is stored."""
    if url:
        await validate_url(state.settings.net_policy(), url, role="input", field="stream_url")


async def _create(state: AppState, tenant: str, body: StreamIn) -> dict[str, Any]:
    await _server(state, tenant, body.module_name, body.entity_id)
    await _check_url(state, body.stream_url)
    now = utcnow()
    doc = {
        "_id": ObjectId(),
        "tenant": tenant,
        **body.document(),
        "generation": 0,
        "created": now,
        "modified": now,
    }
    await state.db[Collections.STREAMS].insert_one(doc)
    log.info("stream_created", stream_id=str(doc["_id"]), active=body.active)
    if body.active:
        await _hint(state, "start", str(doc["_id"]))
    await _ingest_hint(state, "reload", str(doc["_id"]))
    return await _present_with_urls(state, doc)


@router.post("/getCount", summary="How many stream rows match")
async def get_count(
    state: State, principal: Principal, body: Annotated[StreamListBody | None, Body()] = None
) -> dict[str, int]:
    query = _list_query(tenant_of(principal), body or StreamListBody())
    return {"count": await state.db[Collections.STREAMS].count_documents(query)}


@router.post("/getAll", summary="Stream rows (a bare array)")
async def get_all(
    state: State, principal: Principal, body: Annotated[StreamListBody | None, Body()] = None
) -> list[dict[str, Any]]:
    body = body or StreamListBody()
    query = _list_query(tenant_of(principal), body)
    sort = [("_id" if k == "id" else k, v) for k, v in body.sort.items()] or [("created", 1)]
    if all(k != "_id" for k, _ in sort):
        sort.append(("_id", 1))  # stable order among equal keys (pages do not overlap)
    cursor = state.db[Collections.STREAMS].find(query).sort(sort).skip(body.skip)
    if body.limit:
        cursor = cursor.limit(body.limit)
    return [_present(doc) for doc in await cursor.to_list(None)]


@router.post("/getById", summary="One stream row")
async def get_by_id(state: State, principal: Principal, body: StreamIdBody) -> dict[str, Any]:
    return await _present_with_urls(state, await _load(state.db, tenant_of(principal), body.id))


@router.post("/update", summary="Change a stream row (the fields sent; others are kept)")
async def update(state: State, principal: Operator, body: StreamUpdate) -> dict[str, Any]:
    tenant = tenant_of(principal)
    doc = await _load(state.db, tenant, body.id)
    if body.entity_id is not None or body.module_name is not None:
        await _server(state, tenant, body.module_name or doc["module_name"],
                      body.entity_id or doc["entity_id"])  # fmt: skip
    await _check_url(state, body.stream_url)
    changes = body.changes()
    await state.db[Collections.STREAMS].update_one(
        {"_id": doc["_id"], "tenant": tenant},
        {"$set": {**changes, "modified": utcnow()}, "$inc": {"generation": 1}},
    )
    doc = await _load(state.db, tenant, body.id)
    log.info("stream_updated", stream_id=body.id, fields=sorted(changes))
    await _hint(state, "reload" if doc.get("active") else "stop", body.id)
    await _ingest_hint(state, "reload", body.id)
    return await _present_with_urls(state, doc)


@router.post("/setStreamInfo", summary="Store discovered info for a flow (stream_id, role, port)")
async def set_stream_info(
    state: State, principal: Operator, body: SetStreamInfoBody
) -> dict[str, bool]:
    tenant = tenant_of(principal)
    await _check_url(state, body.stream_url)
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
        await _hint(state, "reload", str(target["_id"]))
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
    doc = await _load(state.db, tenant, stream_id)
    await state.db[Collections.STREAMS].delete_one({"_id": doc["_id"], "tenant": tenant})
    log.info("stream_removed", stream_id=stream_id)
    await _hint(state, "stop", stream_id)
    await _ingest_hint(state, "stop", stream_id)
    return {"success": True}


async def _set_active(
    state: AppState, principal: AuthPrincipal, stream_id: str, active: bool
) -> dict:
    tenant = tenant_of(principal)
    await _load(state.db, tenant, stream_id)
    update: dict[str, Any] = {"$set": {"active": active, "modified": utcnow()}}
    if active:
        update["$inc"] = {"generation": 1}
    await state.db[Collections.STREAMS].update_one(
        {"_id": ObjectId(stream_id), "tenant": tenant}, update
    )
    log.info("stream_start_requested" if active else "stream_stop_requested", stream_id=stream_id)
    await _hint(state, "start" if active else "stop", stream_id)
    await _ingest_hint(state, "start" if active else "stop", stream_id)
    return await _present_with_urls(state, await _load(state.db, tenant, stream_id))


@router.post("/start", summary="Start monitoring the stream (active: true)")
async def start(state: State, principal: Operator, body: StreamIdBody) -> dict[str, Any]:
    return await _set_active(state, principal, body.id, True)


@router.post("/stop", summary="Stop monitoring the stream (active: false)")
async def stop(state: State, principal: Operator, body: StreamIdBody) -> dict[str, Any]:
    return await _set_active(state, principal, body.id, False)


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
