"""``GET /metrics`` (issue 7): Prometheus text with jobs, restarts, bitrate, latency, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from bson import ObjectId
from prometheus_client.parser import text_string_to_metric_families
from support.s3 import S3Server
from support.seeds import recording_payload
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN, running_stack
from support.wait import eventually

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


async def test_metrics_upload_backlog_and_throughput_per_storage_target(
    service_env: dict[str, str], db: Any, tmp_path: Path, s3_server: S3Server
) -> None:
    """Issue 24: per storage target, the backlog (files, bytes by upload state) from the file
    records' indexed ``upload_backlog`` field, and the throughput the uploaders write to the
    live plane, on a real upload to versitygw."""
    s3 = s3_server
    s3.make_bucket("metered")
    size = 3 * 1024 * 1024
    async with running_stack(service_env, tmp_path) as stack:
        storage_id = (await stack.api_ok("storage-targets/create", s3.target_body("metered")))["id"]
        body = recording_payload(1, active=False, output_format="mpegts", storage_id=storage_id)
        job_id = (await stack.ok("create", body))["id"]
        path = stack.storage_root / job_id / "metered-2026-03-24_12-00-00.ts"
        path.parent.mkdir(parents=True)
        path.write_bytes(os.urandom(size))
        file_id = ObjectId()
        now = datetime.now(UTC)
        await db[Collections.FILES].insert_one(
            {"_id": file_id, "tenant": "default", "entity_id": job_id, "file_name": path.name,
             "file_path": str(path), "status": "ready", "size_bytes": size,
             "created": now, "modified": now}
        )  # fmt: skip

        async def scrape() -> dict[Any, float]:
            r = await stack.client.get("/metrics")
            assert r.status_code == 200, r.text
            return samples(r.text)

        labels = {"storage_id": storage_id, "tenant": "default"}
        m = await scrape()  # a target with nothing queued: zeros, not absent
        for state in ("pending", "uploading", "failed"):
            assert value(m, "reelhouse_upload_backlog_files", state=state, **labels) == 0
        assert value(m, "reelhouse_upload_throughput_bytes_per_second", **labels) == 0

        # 1 MiB/s: the 3 MiB file (one PUT) is in the backlog for ~3 s.
        await stack.start_janitor(REELHOUSE_UPLOAD_REPAIR_S="3600", REELHOUSE_INTERVAL_S="3600",
                                  REELHOUSE_UPLOAD_MAX_BPS=str(1024 * 1024))  # fmt: skip

        async def queued() -> dict[Any, float] | None:
            m = await scrape()
            n = sum(value(m, "reelhouse_upload_backlog_files", state=s, **labels) or 0
                    for s in ("pending", "uploading"))  # fmt: skip
            return m if n == 1 else None

        m = await eventually(queued, timeout=20, what="the file in the upload backlog")
        in_backlog = sum(value(m, "reelhouse_upload_backlog_bytes", state=s, **labels) or 0
                         for s in ("pending", "uploading"))  # fmt: skip
        assert in_backlog == size

        async def uploaded_and_measured() -> dict[Any, float] | None:
            doc = await db[Collections.FILES].find_one({"_id": file_id})
            if ((doc or {}).get("upload") or {}).get("state") != "uploaded":
                return None
            m = await scrape()
            bps = value(m, "reelhouse_upload_throughput_bytes_per_second", **labels) or 0
            return m if bps > 0 else None

        m = await eventually(uploaded_and_measured, timeout=30, what="uploaded, rate seen")
        for state in ("pending", "uploading", "failed"):
            assert value(m, "reelhouse_upload_backlog_files", state=state, **labels) == 0
            assert value(m, "reelhouse_upload_backlog_bytes", state=state, **labels) == 0
        # The rate is the bytes of the last 10 s over 10 s: the whole file, sent just now.
        bps = value(m, "reelhouse_upload_throughput_bytes_per_second", **labels)
        assert bps == size / 10, bps
        assert "upload_backlog" not in (await db[Collections.FILES].find_one({"_id": file_id}))
