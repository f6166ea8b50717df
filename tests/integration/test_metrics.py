"""``GET /metrics`` (issue 7): Prometheus text with jobs, restarts, bitrate, latency, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
from bson import ObjectId
from prometheus_client.parser import text_string_to_metric_families
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import JobStats, ProcessData
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Subjects


@contextlib.asynccontextmanager
async def api(settings_env: dict[str, str], **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN, **overrides)
    async with api_client(settings) as client:
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


async def test_metrics_cover_jobs_restarts_bitrate_latency_and_connections(
    settings_env: dict[str, str], db: Any
) -> None:
    prefix = settings_env["REELHOUSE_SUBJECT_PREFIX"]
    running, retrying = ObjectId(), ObjectId()
    now = datetime.now(UTC)
    await db[Collections.RECORDINGS].insert_many(
        [
            {"_id": running, "tenant": "default", "active": True, "created": now,
             "runtime": {"state": "running", "restarts": 2, "node": "recorder-1"}},
            {"_id": retrying, "tenant": "default", "active": True, "created": now,
             "runtime": {"state": "retrying", "restarts": 5, "node": "recorder-1"}},
            {"_id": ObjectId(), "tenant": "default", "active": False, "created": now},
        ]
    )  # fmt: skip
    async with api(settings_env) as client:
        nc = await nats.connect(settings_env["REELHOUSE_NATS_URL"])
        try:
            stats = JobStats(
                module="recording",
                job_id=str(running),
                tenant="default",
                node="recorder-1",
                state="running",
                processData=ProcessData(id=str(running), bitrate_kbits=2500),
            )
            subjects = Subjects(prefix)  # what a worker writes: the job's live-plane progress key
            subject = subjects.live_key_subject(subjects.live_progress("recording", str(running)))
            live = client.app.state.reelhouse.live_stats  # type: ignore[attr-defined]
            for _ in range(50):
                await nc.publish(subject, stats.model_dump_json().encode())
                await nc.flush()
                await asyncio.sleep(0.1)
                if live.current_all("recording"):
                    break
        finally:
            await nc.close()
        r = await client.post("/api/nodes/getAll", json={}, headers=HEADERS)
        assert r.status_code == 200
        r = await client.get("/metrics")  # no token needed by default
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        m = samples(r.text)

    assert value(m, "reelhouse_jobs", module="recording", state="running") == 1
    assert value(m, "reelhouse_jobs", module="recording", state="retrying") == 1
    assert value(m, "reelhouse_jobs", module="recording", state="stopped") == 1
    restarts = {"module": "recording", "tenant": "default"}
    assert value(m, "reelhouse_job_restarts", job_id=str(running), **restarts) == 2
    assert value(m, "reelhouse_job_restarts", job_id=str(retrying), **restarts) == 5
    assert value(m, "reelhouse_job_bitrate_kbits", job_id=str(running), **restarts) == 2500
    latency = value(
        m,
        "reelhouse_api_request_duration_seconds_count",
        method="POST",
        route="/api/nodes/getAll",
        status="200",
    )
    assert latency == 1
    assert value(m, "reelhouse_nats_reconnects_total") == 0
    assert value(m, "reelhouse_nats_connected") == 1
    assert value(m, "reelhouse_mongo_reconnects_total") is not None
    assert value(m, "reelhouse_nodes_alive", service="api") == 1


async def test_metrics_token_when_configured(settings_env: dict[str, str], db: Any) -> None:
    secret = "metrics-token-0123456789"
    async with api(settings_env, metrics_token=secret) as client:
        r = await client.get("/metrics")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200
        assert "reelhouse_jobs" in r.text
