"""``GET /metrics``: Prometheus text format (:mod:`reelhouse.api.system.telemetry`).

No token unless ``REELHOUSE_METRICS_TOKEN`` is set; then ``Authorization: Bearer <token>`` (what
Prometheus' ``authorization`` scrape option sends) or ``x-access-token`` must carry it.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reelhouse.api.deps import Ops, State
from reelhouse.api.errors import documented
from reelhouse.common.errors import Unauthorized
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.metrics")

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses=documented(401, s401="UNAUTHORIZED: REELHOUSE_METRICS_TOKEN is set and not sent"),
)
async def metrics(request: Request, state: State, ops: Ops) -> Response:
    """Jobs by state, restarts, per-job bitrate, API latency, NATS and MongoDB reconnects."""
    secret = state.settings.metrics_token
    if secret is not None and secret.get_secret_value():
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        given = given or request.headers.get("x-access-token", "")
        if not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            raise Unauthorized("GET /metrics needs the metrics token (Authorization: Bearer)")
    ops.metrics.connections.bus = state.bus
    try:
        await ops.metrics.refresh(state)
    except Exception as exc:  # MongoDB away: serve what the process knows
        log.warning("metrics_refresh_failed", error=str(exc).splitlines()[0][:200])
    return Response(generate_latest(ops.metrics.registry), media_type=CONTENT_TYPE_LATEST)
