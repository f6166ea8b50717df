"""The API application factory. The lifespan owns the NATS and MongoDB connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from reelhouse.api.accounts import service as accounts
from reelhouse.api.accounts.credential_cache import CredentialCache
from reelhouse.api.accounts.principal import resolve_bootstrap_token, resolve_jwt_secret
from reelhouse.api.accounts.routes import auth, keys, users
from reelhouse.api.channels.routes import channels, platform_auth
from reelhouse.api.errors import install_error_handlers
from reelhouse.api.events.routes import events, webhooks
from reelhouse.api.events.service import run_events_stream
from reelhouse.api.events.webhook_worker import WebhookWorker
from reelhouse.api.files import routes as files
from reelhouse.api.files.signing import resolve_download_secret
from reelhouse.api.ingest import routes as ingest_servers
from reelhouse.api.jobs.stats import LiveStats
from reelhouse.api.middleware import HardeningMiddleware
from reelhouse.api.playback import routes as playback
from reelhouse.api.recordings import routes as recordings
from reelhouse.api.restreams import routes as restreams
from reelhouse.api.settings import ApiSettings
from reelhouse.api.state import AppState, OpsState
from reelhouse.api.storage_targets import routes as storage_targets
from reelhouse.api.streams import routes as streams
from reelhouse.api.system.routes import (
    dashboard,
    health,
    metrics,
    nodes,
    runtime_settings,
    shutdown,
    storage,
    system,
)
from reelhouse.api.system.routes.system import run_log_trimmer
from reelhouse.api.system.telemetry import ApiMetrics, LatencyMiddleware, install_mongo_monitor
from reelhouse.api.system.tools import tool_version
from reelhouse.common import __version__
from reelhouse.common.bus import Bus
from reelhouse.common.credentials import resolve_secret_key
from reelhouse.common.live import LivePlane
from reelhouse.common.logging import get_logger, ship_logs
from reelhouse.common.mongo import connect_mongo, ensure_indexes, get_database
from reelhouse.common.nodes import NodeRegistry
from reelhouse.common.runtime import RuntimeSettingsWatcher

log = get_logger("reelhouse.api")


async def _ensure_indexes(state: AppState, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await ensure_indexes(state.db)
            await accounts.ensure_indexes(state.db)
            return
        except Exception as exc:
            log.warning("mongo_unreachable", error=str(exc).splitlines()[0][:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)


def _operation_tasks(
    app: FastAPI, state: AppState, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """The lifespan's tasks of issue 7: events stream, webhook delivery, runtime settings, logs."""
    ops: OpsState = app.state.ops
    ops.metrics.connections.bus = state.bus
    watcher = RuntimeSettingsWatcher(
        db=state.db,
        bus=state.bus,
        settings=state.settings,
        service="api",
        node_id=state.node.node_id,
    )
    app.state.runtime_watcher = watcher
    s = state.settings
    return [
        asyncio.create_task(
            run_events_stream(
                state.bus, max_age_s=s.events_max_age_s, ready=ops.events_ready, stop=stop
            ),
            name="events-stream",
        ),
        asyncio.create_task(WebhookWorker(state, ops).run(stop), name="webhooks"),
        asyncio.create_task(watcher.run(stop), name="runtime-settings"),
        asyncio.create_task(run_log_trimmer(state, stop), name="logs-trim"),
        asyncio.create_task(
            ship_logs(state.db, stop, service="api", node=state.node.node_id), name="logs"
        ),
    ]


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the app for ``settings`` (tests build their own)."""
    node_id = settings.resolved_node_id("api")
    bootstrap_token = resolve_bootstrap_token(settings)
    download_secret = resolve_download_secret(settings)
    jwt_secret = resolve_jwt_secret(settings)
    sealer = resolve_secret_key(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        bus = Bus(settings, name=node_id)
        await bus.start()
        client = connect_mongo(settings, app_name=node_id)
        db = get_database(client, settings)
        node = NodeRegistry(db=db, service="api", node_id=node_id)
        subjects = bus.subjects
        live = LivePlane(bus, service="api", node_id=node_id,
                         heartbeat_s=settings.node_heartbeat_s, ttl_s=settings.node_ttl_s,
                         watch=(subjects.live_nodes(), subjects.live_owners(),
                                subjects.live_all_progress(),
                                subjects.live_all_ingest_stats(),
                                subjects.live_upload_rates()))  # fmt: skip
        live.beat_fields = node.beat_fields
        live_stats = LiveStats(live)
        credentials = CredentialCache(bus=bus, ttl_s=settings.auth_cache_ttl_s, node=node_id)
        state = AppState(settings=settings, bus=bus, db=db, node=node, live=live,
                         live_stats=live_stats, credentials=credentials,
                         sealer=sealer)  # fmt: skip
        state.tool_versions = {b: await tool_version(b) for b in ("ffmpeg", "ffprobe")}
        app.state.reelhouse = state
        app.state.bootstrap_token = bootstrap_token
        app.state.download_secret = download_secret
        app.state.jwt_secret = jwt_secret
        tasks = [
            asyncio.create_task(_ensure_indexes(state, stop), name="indexes"),
            asyncio.create_task(node.run(stop), name="node-row"),
            asyncio.create_task(live.run(stop), name="live-plane"),
            asyncio.create_task(credentials.run(stop), name="credentials"),
            asyncio.create_task(accounts.purge_expired_forever(db, stop, 60.0), name="purge"),
            *_operation_tasks(app, state, stop),  # issue 7: events, webhooks, settings, logs
        ]
        with contextlib.suppress(TimeoutError):  # serve the live plane's view from the start
            await asyncio.wait_for(live.ready.wait(), settings.live_ready_wait_s)
        log.info("api_started", node=node_id, host=settings.api_host, port=settings.api_port)
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.mark_stopped(), 5)
            await bus.close()
            await client.close()
            log.info("api_stopped", node=node_id)

    app = FastAPI(
        title="Reelhouse API",
        version=__version__,
        description="Record and restream live inputs; inspect streams. Every endpoint except "
        "/api/health needs the `x-access-token` header.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(HardeningMiddleware, max_body_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(nodes.router)
    app.include_router(recordings.router)
    app.include_router(channels.router)
    app.include_router(platform_auth.router)
    app.include_router(shutdown.router)
    app.include_router(files.router)
    app.include_router(playback.router)
    app.include_router(restreams.router)
    app.include_router(streams.router)
    app.include_router(ingest_servers.srt_router)
    app.include_router(ingest_servers.rtmp_router)
    app.include_router(storage.router)
    app.include_router(storage_targets.router)
    app.include_router(dashboard.router)
    app.include_router(auth.router)
    app.include_router(auth.me_router)
    app.include_router(users.router)
    app.include_router(keys.router)
    # issue 7: events, webhooks, system, settings, /metrics; app.state.ops before the lifespan
    install_mongo_monitor()
    ops = OpsState(metrics=ApiMetrics())
    app.state.ops = ops
    app.add_middleware(LatencyMiddleware, metrics=ops.metrics)
    for module in (events, webhooks, system, runtime_settings, metrics):
        app.include_router(module.router)
    trusted = trusted_proxies(settings)
    if trusted:  # outermost: everything after it (rate limits, logs) sees the real client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    return app


def trusted_proxies(settings: ApiSettings) -> list[str]:
    """REELHOUSE_TRUSTED_PROXIES as uvicorn's ``forwarded_allow_ips`` list (empty: none)."""
    return [item.strip() for item in settings.trusted_proxies.split(",") if item.strip()]
