"""The ingest servers' behaviour: one :class:`ServerKind` per protocol (SRT, RTMP), servers as
responses show them, the port checks, the list query, the live ``getStat`` rows and the hints
to the ingest nodes. The routes (made per protocol) are in :mod:`reelhouse.api.ingest.routes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pydantic import BaseModel, ValidationError

from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import format_timestamp, is_object_id
from reelhouse.common.contracts.ingest import (
    IngestStats,
    RtmpServerIn,
    RtmpServerUpdate,
    ServerListBody,
    SrtServerIn,
    SrtServerUpdate,
)
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


async def hint(state: AppState, verb: Verb, server_id: str) -> None:
    """Tell the ingest nodes at once; they reconcile on their timer anyway."""
    try:
        command = JobCommand(module="ingest", verb=verb, job_id=server_id)
        await state.bus.publish(state.bus.subjects.command("ingest", verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", server_id=server_id, verb=verb, error=str(exc))


async def check_port(
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


def list_query(tenant: str, body: ServerListBody) -> dict[str, Any]:
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
