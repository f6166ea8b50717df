"""Ingest contributions as the rest of the engine sees them (docs/INGEST.md).

- :func:`stream_name` turns a stream row's ``stream_id`` into the contribution name the data
  plane reports (``publisher/main-stage/srt-main`` → ``main-stage/srt-main``).
- :func:`publish_url` / :func:`server_read_url` build the concrete URLs ``streams/getById`` and
  ``streams/start`` return for a row on an ingest server.
- :func:`read_contribution` reads a contribution's live-plane key ``ingest.<server_id>.<token>``
  (written by the ingest service while the contribution has a publisher or is held) and
  :func:`fanout_url` builds the URL a job reads it from:
  ``srt://<fanout>?streamid=read/<server_id>/<name>&latency=<µs>`` — what a recording or restream
  with ``INPUT_TYPE_SRT_SERVER``/``INPUT_TYPE_RTMP_SERVER`` hands to FFmpeg.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import nats.errors
import nats.js.errors

from reelhouse.common.live import LivePlane, decode

__all__ = [
    "RELAY_SERVER_ID",
    "Contribution",
    "RelayAnnouncement",
    "fanout_url",
    "publish_url",
    "read_contribution",
    "read_relay_announcement",
    "relay_publish_url",
    "server_read_url",
    "stream_name",
]

_SRT_PREFIXES = ("publisher/", "receiver/")


def stream_name(proto: str, stream_id: str) -> str:
    """The contribution name of a stream row's ``stream_id``: for SRT what follows
    ``publisher/`` or ``receiver/`` (a bare name stays as it is), for RTMP the path itself
    (without a leading ``/`` or a query)."""
    value = stream_id.strip()
    if proto == "srt":
        for prefix in _SRT_PREFIXES:
            if value.startswith(prefix):
                return value[len(prefix) :]
        return value
    return value.lstrip("/").split("?", 1)[0]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _srt_url(host: str, port: int, stream_id: str, passphrase: str, latency_ms: int | None) -> str:
    query: dict[str, str] = {"streamid": stream_id}
    if passphrase:
        query["passphrase"] = passphrase
    if latency_ms is not None:
        query["latency"] = str(int(latency_ms) * 1000)  # FFmpeg's srt: latency is microseconds
    return f"srt://{_host_port(host, port)}?" + urlencode(query, safe="/", quote_via=quote)


def publish_url(
    proto: str,
    *,
    host: str,
    port: int,
    name: str,
    passphrase: str = "",
    latency_ms: int | None = None,
) -> str:
    """Where an encoder pushes contribution ``name``: ``srt://h:p?streamid=publisher/<name>``
    (``&passphrase=`` when one applies) or ``rtmp://h:p/<name>`` (``?key=`` if the row has one)."""
    if proto == "srt":
        return _srt_url(host, port, f"publisher/{name}", passphrase, latency_ms)
    url = f"rtmp://{_host_port(host, port)}/{quote(name, safe='/')}"
    return f"{url}?key={quote(passphrase, safe='')}" if passphrase else url


def server_read_url(
    *, host: str, port: int, name: str, passphrase: str = "", latency_ms: int | None = None
) -> str:
    """A reader on an SRT server's own port: ``srt://h:p?streamid=receiver/<name>``."""
    return _srt_url(host, port, f"receiver/{name}", passphrase, latency_ms)


@dataclass(frozen=True)
class Contribution:
    """A contribution's live-plane value: who serves it and where jobs read it."""

    server_id: str
    name: str
    proto: str
    node: str
    """The ingest node whose data plane holds it."""
    fanout: str
    """``host:port`` of that node's fan-out SRT listener."""
    publisher: bool
    """A publisher is connected now (False: held, waiting for it to return)."""
    since: float | None = None
    readers: int = 0

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Contribution:
        return cls(
            server_id=str(value.get("server_id", "")),
            name=str(value.get("name", "")),
            proto=str(value.get("proto", "srt")),
            node=str(value.get("node", "")),
            fanout=str(value.get("fanout", "")),
            publisher=bool(value.get("publisher")),
            since=value.get("since"),
            readers=int(value.get("readers") or 0),
        )

    def reader_url(self, *, latency_ms: int = 120, timeout_s: float | None = None) -> str:
        """The SRT URL a job reads this contribution from (see :func:`fanout_url`)."""
        return fanout_url(
            self.fanout, self.server_id, self.name, latency_ms=latency_ms, timeout_s=timeout_s
        )


def fanout_url(
    fanout: str, server_id: str, name: str, *, latency_ms: int = 120, timeout_s: float | None = None
) -> str:
    """``srt://<fanout>?streamid=read/<server_id>/<name>&latency=<µs>`` (mode caller), and with
    ``timeout_s`` the read timeout (``timeout=<µs>``): a job's FFmpeg sets it above the fan-out's
    publisher-gap hold, so that it rides out a gap the fan-out holds it through."""
    query = {"streamid": f"read/{server_id}/{name}", "latency": str(int(latency_ms) * 1000)}
    if timeout_s is not None:
        query["timeout"] = str(int(timeout_s * 1_000_000))
    return f"srt://{fanout}?" + urlencode(query, safe="/", quote_via=quote)


async def read_contribution(live: LivePlane, server_id: str, name: str) -> Contribution | None:
    """The contribution ``(server_id, name)`` as the live plane holds it now; None when it has
    no publisher and is not held (a job then waits), or when NATS is not reachable."""
    if live.kv is None or not live.bus.connected:
        return None
    key = live.subjects.live_ingest(server_id, name)
    with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.errors.TimeoutError):
        got = await live.kv.get(key)
        value = decode(got.value)
        if value is not None:
            return Contribution.from_value(value)
    return None


RELAY_SERVER_ID = "72656c61792d736572766572"
"""The ingest node's internal relay server (``relay-server`` in hex: a 24-hex id no server row
has, since ObjectIds begin with their creation time). Never a row of ``srt_servers``."""


@dataclass(frozen=True)
class RelayAnnouncement:
    """The live key ``ingestrelay``: where a relay stage publishes, and the node serving it."""

    publish: str
    """``host:port`` of the relay server (SRT)."""
    node: str
    latency_ms: int = 120


async def read_relay_announcement(live: LivePlane) -> RelayAnnouncement | None:
    """The ingest node's relay announcement; None when no ingest service announces one now
    (none runs, its relay port is disabled, or NATS is not reachable)."""
    if live.kv is None or not live.bus.connected:
        return None
    with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.errors.TimeoutError):
        got = await live.kv.get(live.subjects.live_ingest_relay())
        value = decode(got.value)
        if value and value.get("publish"):
            return RelayAnnouncement(
                publish=str(value["publish"]),
                node=str(value.get("node", "")),
                latency_ms=int(value.get("latency_ms") or 120),
            )
    return None


def relay_publish_url(announcement: RelayAnnouncement, job_id: str, passphrase: str) -> str:
    """``srt://<relay>?streamid=publisher/<job_id>&passphrase=…&latency=<µs>``: where a
    restream's relay stage pushes its one copy of the stream."""
    host, _, port = announcement.publish.rpartition(":")
    return _srt_url(host.strip("[]"), int(port), f"publisher/{job_id}", passphrase,
                    announcement.latency_ms)  # fmt: skip
