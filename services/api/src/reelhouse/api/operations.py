"""Wiring of the events, webhooks and operator endpoints (issue 7) into the app: routers and
middleware at build time, background tasks in the lifespan. ``app.py`` calls the two functions."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from reelhouse.api.events.routes import events, webhooks
from reelhouse.api.events.service import run_events_stream
from reelhouse.api.events.webhook_worker import WebhookWorker
from reelhouse.api.ops import OpsState
from reelhouse.api.state import AppState
from reelhouse.api.system.routes import metrics, settings, system
from reelhouse.api.system.routes.system import run_log_trimmer
from reelhouse.api.system.telemetry import ApiMetrics, LatencyMiddleware, install_mongo_monitor
from reelhouse.common.logging import ship_logs
from reelhouse.common.runtime import RuntimeSettingsWatcher


def install_operations(app: FastAPI) -> None:
    """Routers, the latency middleware and ``app.state.ops`` (call before the lifespan runs)."""
    install_mongo_monitor()
    ops = OpsState(metrics=ApiMetrics())
    app.state.ops = ops
    app.add_middleware(LatencyMiddleware, metrics=ops.metrics)
    for module in (events, webhooks, system, settings, metrics):
        app.include_router(module.router)


def start_operations(
    app: FastAPI, state: AppState, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """The lifespan's tasks: events stream, webhook delivery, runtime settings, log shipping."""
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
