"""The Streams module's behaviour: stream rows as responses show them (with the publish and read
URLs of a row on an ingest server), the list query, create and start/stop, and the hints to the
probers and ingest nodes. The routes are in :mod:`reelhouse.api.streams.routes`.
"""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.accounts.principal import AuthPrincipal, tenant_of
from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import format_timestamp, is_object_id, utcnow
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.contracts.streams import StreamIn, StreamListBody
from reelhouse.common.errors import NotFound, ValidationFailed
from reelhouse.common.ingest import fanout_url as ingest_fanout_url
from reelhouse.common.ingest import publish_url, server_read_url, stream_name
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.netpolicy import validate_url
from reelhouse.common.subjects import Verb

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


def present_status(doc: dict[str, Any]) -> dict[str, Any] | None:
    status = doc.get("status")
    if not status or not doc.get("active"):
        return None  # not monitored (a stopped row's last status is history, not news)
    return {
        "state": status.get("state"),
        "since": format_timestamp(status["since"]) if status.get("since") else None,
        "node": status.get("node"),
        "error": status.get("error"),
    }


async def server_of(
    state: AppState, tenant: str, module_name: str, entity_id: str
) -> dict[str, Any]:
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


def urls(state: AppState, doc: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
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


async def present_with_urls(state: AppState, doc: dict[str, Any]) -> dict[str, Any]:
    out = present(doc)
    module = str(doc.get("module_name", ""))
    server = None
    if module in _SERVER_COLLECTIONS and is_object_id(str(doc.get("entity_id", ""))):
        collection = _SERVER_COLLECTIONS[module][0]
        server = await state.db[collection].find_one(
            {"_id": ObjectId(str(doc["entity_id"])), "tenant": doc.get("tenant")}
        )
    out.update(urls(state, doc, server))
    return out


async def ingest_hint(state: AppState, verb: Verb, stream_id: str) -> None:
    """A row changed: the ingest nodes drop their cached rows (and contributions no active
    row allows any more)."""
    try:
        command = JobCommand(module=MODULE, verb=verb, job_id=stream_id)
        await state.bus.publish(state.bus.subjects.command("ingest", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", stream_id=stream_id, verb=verb, error=str(exc))


def present(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    for key in _FIELDS:
        out[key] = doc.get(key, _DEFAULTS.get(key))
    if out["stream_info"]:
        info = dict(out["stream_info"])
        if info.get("updated"):
            info["updated"] = format_timestamp(info["updated"])
        out["stream_info"] = info
    out["status"] = present_status(doc)
    out["created"] = format_timestamp(doc["created"])
    out["modified"] = format_timestamp(doc["modified"])
    out["active"] = bool(doc.get("active"))
    out["success"] = True
    return out


async def load(db: AsyncDatabase, tenant: str, stream_id: str) -> dict[str, Any]:
    doc = await db[Collections.STREAMS].find_one({"_id": ObjectId(stream_id), "tenant": tenant})
    if doc is None:
        raise NotFound(f"stream {stream_id} not found", field="id")
    return doc


async def hint(state: AppState, verb: Verb, stream_id: str) -> None:
    """Tell probers at once; if NATS is away they reconcile on their timer anyway."""
    try:
        command = JobCommand(module=MODULE, verb=verb, job_id=stream_id)
        await state.bus.publish(state.bus.subjects.command("prober", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", stream_id=stream_id, verb=verb, error=str(exc))


def list_query(tenant: str, body: StreamListBody) -> dict[str, Any]:
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


async def check_url(state: AppState, url: str | None) -> None:
    """A stream URL is probed by the monitors: the address policy applies when it is stored."""
    if url:
        await validate_url(state.settings.net_policy(), url, role="input", field="stream_url")


async def create(state: AppState, tenant: str, body: StreamIn) -> dict[str, Any]:
    await server_of(state, tenant, body.module_name, body.entity_id)
    await check_url(state, body.stream_url)
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
        await hint(state, "start", str(doc["_id"]))
    await ingest_hint(state, "reload", str(doc["_id"]))
    return await present_with_urls(state, doc)


async def set_active(
    state: AppState, principal: AuthPrincipal, stream_id: str, active: bool
) -> dict:
    tenant = tenant_of(principal)
    await load(state.db, tenant, stream_id)
    update: dict[str, Any] = {"$set": {"active": active, "modified": utcnow()}}
    if active:
        update["$inc"] = {"generation": 1}
    await state.db[Collections.STREAMS].update_one(
        {"_id": ObjectId(stream_id), "tenant": tenant}, update
    )
    log.info("stream_start_requested" if active else "stream_stop_requested", stream_id=stream_id)
    await hint(state, "start" if active else "stop", stream_id)
    await ingest_hint(state, "start" if active else "stop", stream_id)
    return await present_with_urls(state, await load(state.db, tenant, stream_id))
