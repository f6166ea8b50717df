"""Ingest: SRT and RTMP servers (issue 21, ``docs/INGEST.md``), their API bodies and bus messages.

A server is stored in ``srt_servers`` or ``rtmp_servers``::

    {_id, tenant, server_name, server_port, active, node, generation, created, modified,
     server_latency, server_passphrase}              (the last two: SRT only)

``node`` names the ingest node that serves it (``""``: any; this round runs one per host).
The port ranges are deployment settings, so the range check lives in the API route, not here.

Bus messages: :class:`IngestEvent` on ``<p>.evt.ingest.<server_id>.<event>`` (a
:class:`~reelhouse.common.contracts.messages.JobEvent` whose ``job_id`` is the server id, so the
events stream, the WebSocket relay and webhooks carry it unchanged) and :class:`IngestStats` on
``<p>.stats.ingest.<server_id>`` and in the live plane's ``ingeststats.<server_id>``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
)

from reelhouse.common.contracts.base import BusMessage, ObjectIdStr, Timestamp, utcnow
from reelhouse.common.contracts.listing import ListQuery
from reelhouse.common.contracts.messages import JobEvent
from reelhouse.common.contracts.types import Name, string_schema, whole_int

Proto = Literal["srt", "rtmp"]
IngestModule = Literal["MODULE_SRT_SERVERS", "MODULE_RTMP_SERVERS"]

PROTO_OF_MODULE: Final[dict[str, Proto]] = {
    "MODULE_SRT_SERVERS": "srt",
    "MODULE_RTMP_SERVERS": "rtmp",
}
"""A stream row's ``module_name`` → the protocol of its server."""

COLLECTION_OF_PROTO: Final[dict[str, str]] = {"srt": "srt_servers", "rtmp": "rtmp_servers"}
"""Where each protocol's servers are stored (as in :class:`reelhouse.common.mongo.Collections`)."""

PASSPHRASE_MIN: Final = 10
PASSPHRASE_MAX: Final = 79
_PASSPHRASE_PATTERN: Final = rf"^$|^[\x20-\x7e]{{{PASSPHRASE_MIN},{PASSPHRASE_MAX}}}$"


def _passphrase(value: str) -> str:
    if value and not PASSPHRASE_MIN <= len(value) <= PASSPHRASE_MAX:
        raise ValueError(
            f"must be empty (no encryption) or {PASSPHRASE_MIN} to {PASSPHRASE_MAX} characters "
            f"long, as SRT requires; got {len(value)}"
        )
    if any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise ValueError("must be printable ASCII characters")
    return value


Passphrase = Annotated[
    str,
    StringConstraints(max_length=PASSPHRASE_MAX),
    AfterValidator(_passphrase),
    string_schema(pattern=_PASSPHRASE_PATTERN, max_length=PASSPHRASE_MAX),
]
"""An SRT passphrase (or an RTMP stream key): ``""`` for none, else 10 to 79 printable ASCII."""

ServerPort = whole_int(ge=1, le=65535)
"""A server's port; the deployment's range (``REELHOUSE_INGEST_*_PORTS``) is checked by the API."""

Latency = whole_int(ge=20, le=8000)
"""SRT latency (TSBPD delay), milliseconds."""

NodeName = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9._-]*$")]
"""The ingest node that serves a server (``""``: any)."""

DEFAULT_LATENCY_MS: Final = 120


class SrtServerIn(BaseModel):
    """Body of ``/api/srt-servers/create``."""

    model_config = ConfigDict(extra="forbid")

    server_name: Name
    server_port: ServerPort
    server_latency: Latency = DEFAULT_LATENCY_MS
    server_passphrase: Passphrase = ""
    active: StrictBool = False
    node: NodeName = ""


class SrtServerUpdate(BaseModel):
    """Body of ``/api/srt-servers/update``: ``id`` plus the fields to change."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr
    server_name: Name | None = None
    server_port: ServerPort | None = None
    server_latency: Latency | None = None
    server_passphrase: Passphrase | None = None
    active: StrictBool | None = None
    node: NodeName | None = None


class RtmpServerIn(BaseModel):
    """Body of ``/api/rtmp-servers/create``."""

    model_config = ConfigDict(extra="forbid")

    server_name: Name
    server_port: ServerPort
    active: StrictBool = False
    node: NodeName = ""


class RtmpServerUpdate(BaseModel):
    """Body of ``/api/rtmp-servers/update``."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr
    server_name: Name | None = None
    server_port: ServerPort | None = None
    active: StrictBool | None = None
    node: NodeName | None = None


class ServerListBody(ListQuery):
    """``getAll`` / ``getCount`` of a server module."""

    filter_fields: ClassVar[frozenset[str]] = frozenset(
        {"_id", "id", "server_name", "server_port", "active", "node"}
    )
    sort_fields: ClassVar[frozenset[str]] = frozenset(
        {"_id", "id", "server_name", "server_port", "active", "created", "modified"}
    )


class StatBody(BaseModel):
    """``getStat``: ``{}`` for every server of the tenant, or ``{"id"}`` for one."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr | None = None


# -- bus messages -----------------------------------------------------------------------------

IngestEventType = Literal[
    "ingest_refused", "publisher_up", "publisher_lost", "publisher_back", "publisher_replaced",
    "contribution_ended",
]  # fmt: skip
INGEST_EVENTS: Final[tuple[str, ...]] = IngestEventType.__args__  # type: ignore[attr-defined]


class IngestEvent(JobEvent):
    """An ingest event on ``<p>.evt.ingest.<server_id>.<event>``: ``job_id`` is the server id."""

    module: Literal["ingest"] = "ingest"  # type: ignore[assignment]
    proto: Proto | None = None
    name: str | None = None
    """The contribution (``main-stage/srt-main``), when known."""
    stream_id: str | None = None
    """The raw stream id the caller sent (refusals)."""
    role: Literal["publish", "read"] | None = None
    via: Literal["server", "fanout"] | None = None
    remote: str | None = None
    conn: str | None = None
    gap_ms: int | None = None
    idle_ms: int | None = None
    old_remote: str | None = None


class ConnStat(BaseModel):
    """One live connection as ``getStat`` shows it (docs/INGEST.md "Statistics")."""

    model_config = ConfigDict(extra="ignore")

    server_id: str
    stream_id: str
    """The contribution's name (``main-stage/srt-main``)."""
    proto: Proto
    role: Literal["publish", "read"]
    conn: str = ""
    remote_address: str = ""
    connected_at: float = 0.0
    bytes: int = 0
    bitrate_kbits: float = 0.0
    rtt_ms: float | None = None
    recv_rate_kbits: float | None = None
    send_rate_kbits: float | None = None
    link_capacity_kbits: float | None = None
    pkt_recv_loss: int | None = None
    pkt_retrans: int | None = None
    pkt_recv_drop: int | None = None
    pkt_send_loss: int | None = None
    recv_buffer_ms: float | None = None
    send_buffer_ms: float | None = None
    latency_ms: float | None = None
    readers: int = 0
    """Readers of this connection's contribution."""
    held: bool = False
    """The contribution has no publisher now; its readers are held (a publisher gap)."""
    gaps: int = 0
    """Publisher gaps of the contribution so far (returns within the hold, and takeovers)."""
    gap_ms_total: int = 0


class ContributionStat(BaseModel):
    """One contribution of a server (publisher, readers, gaps)."""

    model_config = ConfigDict(extra="ignore")

    server_id: str
    proto: Proto
    name: str
    publisher: bool = False
    since: float | None = None
    readers: int = 0
    bytes: int = 0
    bitrate_kbits: float = 0.0
    gop_bytes: int = 0
    gaps: int = 0
    gap_ms_total: int = 0
    held: bool = False


class IngestStats(BusMessage):
    """One server's statistics, about once a second on ``<p>.stats.ingest.<server_id>`` and in
    the live plane's ``ingeststats.<server_id>``."""

    type: Literal["ingest_stats"] = "ingest_stats"
    module: Literal["ingest"] = "ingest"
    server_id: str
    job_id: str = ""
    """The server id again (what the WebSocket relay filters on, as for job stats)."""
    tenant: str
    node: str
    proto: Proto
    timestamp: Timestamp = Field(default_factory=utcnow)
    conns: list[ConnStat] = Field(default_factory=list)
    contributions: list[ContributionStat] = Field(default_factory=list)


def conn_stat(raw: dict[str, Any], contribution: dict[str, Any] | None) -> ConnStat:
    """A data-plane ``stats`` connection entry as :class:`ConnStat` (field names of the issue),
    with its contribution's readers and gaps."""
    data = dict(raw)
    data["stream_id"] = raw.get("name", "")
    data["remote_address"] = raw.get("remote", "")
    of = contribution or {}
    data["readers"] = int(of.get("readers") or 0)
    data["held"] = bool(of.get("held"))
    data["gaps"] = int(of.get("gaps") or 0)
    data["gap_ms_total"] = int(of.get("gap_ms_total") or 0)
    return ConnStat.model_validate(data)
