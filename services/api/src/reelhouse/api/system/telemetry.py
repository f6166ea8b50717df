"""Prometheus metrics of the API (``GET /metrics``).

Own registry per app (tests build many apps in one process). Job gauges (by state, restarts,
bitrate) are read at scrape time: states and restarts from MongoDB, bitrate from the live stats
cache. Object storage (issue 24): each storage target's upload backlog from the file records
that carry its id in their top-level ``upload_backlog`` field (set by the janitor's uploader only
while an upload is pending, running or failed: one indexed equality query per target reads the
backlog, never the archive), and its throughput summed over the uploaders' ``uploadrate.*``
live-plane keys. Request latency comes from :class:`LatencyMiddleware`, labelled by route
template (never by raw path, which would let callers create label values). NATS reconnects come
from the :class:`~reelhouse.common.bus.Bus` counters, MongoDB reconnects from a pymongo
heartbeat listener (process-wide: a recovered heartbeat after a failed one counts as a reconnect).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pymongo import monitoring
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelhouse.common.mongo import Collections, find_each

BACKLOG_STATES = ("pending", "uploading", "failed")
UPLOAD_RATE_STALE_S = 35.0
"""An uploader writes its rate every scan (5 s) with a 30 s TTL; older entries are ignored."""


class _MongoMonitor(monitoring.ServerHeartbeatListener):
    """Counts failed heartbeats and recoveries of every MongoDB client made after install."""

    def __init__(self) -> None:
        self.failures = 0
        self.reconnects = 0
        self._down: set[Any] = set()

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        if event.connection_id in self._down:
            self._down.discard(event.connection_id)
            self.reconnects += 1

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        self.failures += 1
        self._down.add(event.connection_id)


MONGO_MONITOR = _MongoMonitor()
_installed = False


def install_mongo_monitor() -> None:
    """Register the heartbeat listener (once per process; before clients are made)."""
    global _installed
    if not _installed:
        monitoring.register(MONGO_MONITOR)
        _installed = True


class _ConnectionCollector(Collector):
    def __init__(self) -> None:
        self.bus: Any = None

    def collect(self) -> Iterator[Any]:
        bus = self.bus
        nats_reconnects = CounterMetricFamily(
            "reelhouse_nats_reconnects", "Times this API's NATS connection came back."
        )
        nats_reconnects.add_metric([], bus.reconnects if bus else 0)
        yield nats_reconnects
        nats_disconnects = CounterMetricFamily(
            "reelhouse_nats_disconnects", "Times this API's NATS connection was lost."
        )
        nats_disconnects.add_metric([], bus.disconnects if bus else 0)
        yield nats_disconnects
        up = GaugeMetricFamily("reelhouse_nats_connected", "1 while connected to NATS.")
        up.add_metric([], 1 if bus is not None and bus.connected else 0)
        yield up
        mongo = CounterMetricFamily(
            "reelhouse_mongo_reconnects", "Times a MongoDB server answered again after failing."
        )
        mongo.add_metric([], MONGO_MONITOR.reconnects)
        yield mongo
        failures = CounterMetricFamily(
            "reelhouse_mongo_heartbeat_failures", "Failed MongoDB server heartbeats."
        )
        failures.add_metric([], MONGO_MONITOR.failures)
        yield failures


class ApiMetrics:
    """The API's registry and instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "reelhouse_api_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.jobs = Gauge(
            "reelhouse_jobs", "Jobs by module and state.", ["module", "state"], registry=r
        )
        self.restarts = Gauge(
            "reelhouse_job_restarts",
            "FFmpeg restarts of each running job (its runtime block).",
            ["module", "job_id", "tenant"],
            registry=r,
        )
        self.bitrate = Gauge(
            "reelhouse_job_bitrate_kbits",
            "Current output bitrate of each running job, kbit/s (live stats).",
            ["module", "job_id", "tenant"],
            registry=r,
        )
        # Ingest contributions (issue 21): labels are bounded by the servers and stream rows
        # that exist (server id, contribution name), never by callers' addresses.
        ingest_labels = ["server_id", "stream_id", "proto"]
        self.ingest_bitrate = Gauge(
            "reelhouse_ingest_bitrate_kbits",
            "Bitrate a contribution's publisher sends, kbit/s.",
            ingest_labels,
            registry=r,
        )
        self.ingest_readers = Gauge(
            "reelhouse_ingest_readers", "Readers of a contribution.", ingest_labels, registry=r
        )
        self.ingest_publisher = Gauge(
            "reelhouse_ingest_publisher_up",
            "1 while a contribution has a publisher, 0 while it is held for one.",
            ingest_labels,
            registry=r,
        )
        self.ingest_srt = {
            field: Gauge(
                f"reelhouse_ingest_srt_{field}",
                f"SRT statistic `{field}` of a contribution's publisher connection (getStat).",
                ["server_id", "stream_id"],
                registry=r,
            )
            for field in ("rtt_ms", "recv_rate_kbits", "link_capacity_kbits", "pkt_recv_loss",
                          "pkt_retrans", "pkt_recv_drop", "recv_buffer_ms", "latency_ms")
        }  # fmt: skip
        self.nodes = Gauge(
            "reelhouse_nodes_alive", "Service nodes heartbeating now.", ["service"], registry=r
        )
        self.ws_clients = Gauge(
            "reelhouse_events_ws_clients", "Connected events WebSocket clients.", registry=r
        )
        self.webhook_deliveries = Counter(
            "reelhouse_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=r,
        )
        upload_labels = ["storage_id", "tenant", "state"]
        self.upload_backlog_files = Gauge(
            "reelhouse_upload_backlog_files",
            "Files waiting for their upload to a storage target, by upload state "
            "(pending, uploading, failed).",
            upload_labels,
            registry=r,
        )
        self.upload_backlog_bytes = Gauge(
            "reelhouse_upload_backlog_bytes",
            "Bytes of the files waiting for their upload to a storage target, by upload state.",
            upload_labels,
            registry=r,
        )
        self.upload_throughput = Gauge(
            "reelhouse_upload_throughput_bytes_per_second",
            "Bytes a second sent to a storage target over the last 10 s, all uploaders summed.",
            ["storage_id", "tenant"],
            registry=r,
        )
        self.connections = _ConnectionCollector()
        r.register(self.connections)

    async def refresh(self, state: Any) -> None:
        """Read the job and node gauges (at scrape time)."""

        self.jobs.clear()
        self.restarts.clear()
        for module, coll in (
            ("recording", Collections.RECORDINGS),
            ("restream", Collections.RESTREAMS),
        ):
            counts: dict[str, int] = {}
            cursor = state.db[coll].find(
                {}, {"active": 1, "tenant": 1, "runtime.state": 1, "runtime.restarts": 1}
            )
            async for doc in cursor.limit(100_000):
                runtime = doc.get("runtime") or {}
                name = runtime.get("state") or ("pending" if doc.get("active") else "stopped")
                counts[name] = counts.get(name, 0) + 1
                if runtime.get("state"):
                    labels = (module, str(doc["_id"]), str(doc.get("tenant", "")))
                    self.restarts.labels(*labels).set(float(runtime.get("restarts") or 0))
            for name, n in counts.items():
                self.jobs.labels(module, name).set(n)
        self.bitrate.clear()
        for module in ("recording", "restream"):
            for tenant_stats in state.live_stats.current_all(module):
                self.bitrate.labels(module, tenant_stats.job_id, tenant_stats.tenant).set(
                    tenant_stats.processData.bitrate_kbits
                )
        self._refresh_ingest(state)
        await self._refresh_uploads(state)
        self.nodes.clear()
        alive: dict[str, int] = {}
        for entry in list(state.live.nodes.values()):
            if entry.alive:
                alive[entry.service] = alive.get(entry.service, 0) + 1
        for service, n in alive.items():
            self.nodes.labels(service).set(n)

    async def _refresh_uploads(self, state: Any) -> None:
        for gauge in (self.upload_backlog_files, self.upload_backlog_bytes, self.upload_throughput):
            gauge.clear()
        tenant_of: dict[str, str] = {}
        cursor = state.db[Collections.STORAGE_TARGETS].find({}, {"tenant": 1})
        async for doc in cursor.limit(10_000):
            tenant_of[str(doc["_id"])] = str(doc.get("tenant", ""))
        if not tenant_of:
            return
        counts = {(sid, st): [0, 0] for sid in tenant_of for st in BACKLOG_STATES}
        projection = {"upload_backlog": 1, "status": 1, "size_bytes": 1, "upload.state": 1,
                      "upload.size": 1}  # fmt: skip
        for doc in await find_each(
            state.db[Collections.FILES], "upload_backlog", tenant_of, projection
        ):
            upload = doc.get("upload") or {}
            key = (str(doc["upload_backlog"]), str(upload.get("state")))
            if doc.get("status") == "deleted" or key not in counts:
                continue
            counts[key][0] += 1
            counts[key][1] += int(upload.get("size") or doc.get("size_bytes") or 0)
        for (sid, st), (n, size) in counts.items():
            self.upload_backlog_files.labels(sid, tenant_of[sid], st).set(n)
            self.upload_backlog_bytes.labels(sid, tenant_of[sid], st).set(size)
        rates = {sid: 0.0 for sid in tenant_of}
        fresh = time.time() - UPLOAD_RATE_STALE_S
        for (sid, _node), (seen, value) in list(state.live.upload_rates.items()):
            if sid in rates and seen >= fresh:
                rates[sid] += float(value.get("bps") or 0.0)
        for sid, bps in rates.items():
            self.upload_throughput.labels(sid, tenant_of[sid]).set(bps)

    def _refresh_ingest(self, state: Any) -> None:
        from reelhouse.common.contracts.ingest import IngestStats

        for gauge in (self.ingest_bitrate, self.ingest_readers, self.ingest_publisher,
                      *self.ingest_srt.values()):  # fmt: skip
            gauge.clear()
        for _, value in list(state.live.ingest_stats.values()):
            try:
                stats = IngestStats.model_validate(value)
            except ValueError:
                continue
            for c in stats.contributions:
                labels = (c.server_id, c.name, c.proto)
                self.ingest_bitrate.labels(*labels).set(c.bitrate_kbits)
                self.ingest_readers.labels(*labels).set(c.readers)
                self.ingest_publisher.labels(*labels).set(1 if c.publisher else 0)
            for conn in stats.conns:
                if conn.role != "publish" or conn.proto != "srt":
                    continue
                for field, gauge in self.ingest_srt.items():
                    number = getattr(conn, field)
                    if number is not None:
                        gauge.labels(conn.server_id, conn.stream_id).set(float(number))


class LatencyMiddleware:
    """Observes every HTTP request's duration into :attr:`ApiMetrics.requests`."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", "?"), template, str(status)).observe(
                time.perf_counter() - started
            )
