"""Object storage (issue 24) on the real stack: versitygw (a real S3-compatible server), the
janitor's uploader as a subprocess, the API in-process, real NATS and FerretDB.

- storage targets: validation (400 naming the field, nothing stored), credentials write-only
  and sealed at rest, ``test`` answering a failure class;
- a split recording's segments are uploaded, verified, then removed locally; a presigned URL
  serves a Range; archive moves the object; removeFile and retention delete objects;
- kill -9 of the janitor mid-multipart: the restarted one resumes from ``list_parts`` and
  sends no finished part again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import ObjectId
from support.media import av_streams, ffprobe
from support.s3 import S3Server
from support.seeds import recording_payload
from support.services import settings_from_env
from support.stack import Stack, running_stack
from support.wait import eventually

from reelhouse.common.bus import Bus
from reelhouse.common.events import build_event
from reelhouse.common.files import present_file, upload_queued
from reelhouse.common.mongo import Collections
from reelhouse.janitor.settings import JanitorSettings
from reelhouse.janitor.uploads import Uploader

UPLOADER = {
    "REELHOUSE_UPLOAD_REPAIR_S": "3600",  # events, finished uploads and timers drive it
    "REELHOUSE_UPLOAD_PART_SIZE_MB": "5",
    "REELHOUSE_UPLOAD_RETRY_INITIAL_S": "0.5",
    "REELHOUSE_UPLOAD_RETRY_MAX_S": "2",
    "REELHOUSE_INTERVAL_S": "3600",  # retention passes only when a test asks (cleanup)
}
"""Janitor settings that keep uploads within a test's patience."""


@pytest.fixture
async def stack(service_env, tmp_path):
    env = {**service_env, "REELHOUSE_ARCHIVE_ROOT": str(tmp_path / "archive")}
    async with running_stack(env, tmp_path) as s:
        yield s


async def add_target(stack: Stack, s3: S3Server, bucket: str, **extra: Any) -> str:
    s3.make_bucket(bucket)
    return (await stack.api_ok("storage-targets/create", s3.target_body(bucket, **extra)))["id"]


async def test_storage_targets_validate_seal_credentials_and_test_the_bucket(stack, db, s3_server):
    s3 = s3_server
    good = s3.target_body("media")
    bad_cases = [
        ({**good, "bucket": "UPPER"}, "bucket"),
        ({**good, "provider": "dropbox"}, "provider"),
        ({**good, "endpoint_url": "ftp://127.0.0.1:21"}, "endpoint_url"),
        ({**good, "endpoint_url": "http://169.254.169.254"}, "endpoint_url"),  # metadata
        ({**good, "storage_class": "COLD"}, "storage_class"),
        ({k: v for k, v in good.items() if k != "secret_access_key"}, "secret_access_key"),
        ({**good, "surprise": 1}, "surprise"),
    ]
    for body, field in bad_cases:
        r = await stack.api("storage-targets/create", body)
        assert r.status_code == 400, (field, r.text)
        error = r.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        named = [error.get("field"), *[d.get("field") for d in error.get("details") or []]]
        assert any(field in str(f) for f in named), (field, error)
    assert await db[Collections.STORAGE_TARGETS].count_documents({}) == 0  # nothing stored

    s3.make_bucket("media")
    created = await stack.api_ok("storage-targets/create", good)
    assert created["credentials_set"] is True
    assert "secret_access_key" not in json.dumps(created)
    assert good["secret_access_key"] not in json.dumps(created)
    listed = await stack.api_ok("storage-targets/getAll")
    assert [t["id"] for t in listed] == [created["id"]]
    assert good["access_key_id"] not in json.dumps(listed)
    stored = await db[Collections.STORAGE_TARGETS].find_one({"_id": ObjectId(created["id"])})
    assert good["secret_access_key"] not in json.dumps(stored, default=str)  # sealed at rest
    assert good["access_key_id"] not in json.dumps(stored, default=str)

    assert await stack.api_ok("storage-targets/test", {"id": created["id"]}) | {
        "elapsed_ms": 0
    } == {"ok": True, "failure": None, "elapsed_ms": 0}

    async def failure_of(**changes: Any) -> str:
        body = {**good, "id": created["id"], **changes}
        await stack.api_ok("storage-targets/update", body)
        answer = await stack.api_ok("storage-targets/test", {"id": created["id"]})
        assert answer["ok"] is False
        return answer["failure"]

    assert await failure_of(secret_access_key="not-the-secret-at-all") == "auth"
    assert await failure_of(bucket="no-such-bucket") == "no_bucket"
    closed = f"http://127.0.0.1:{_closed_port()}"
    assert await failure_of(endpoint_url=closed) == "unreachable"
    # One key without the other is refused, naming the missing one; nothing changes.
    one_key = {**good, "id": created["id"], "access_key_id": "X" * 8, "secret_access_key": None}
    r = await stack.api("storage-targets/update", one_key)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "secret_access_key", r.text

    # Recording jobs: storage_id must name a target of the tenant (400 naming it, no job).
    body = recording_payload(1, active=False, storage_id=str(ObjectId()))
    r = await stack.call("create", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "storage_id", r.text
    r = await stack.call("create", {**body, "storage_id": "not-an-id"})
    assert r.status_code == 400, r.text
    assert "storage_id" in r.text
    assert await db[Collections.RECORDINGS].count_documents({}) == 0
    job = await stack.ok("create", {**body, "storage_id": created["id"], "keep_local": True})
    assert job["storage_id"] == created["id"]
    assert job["keep_local"] is True
    # A target a job names cannot be removed.
    r = await stack.api("storage-targets/remove", {"id": created["id"]})
    assert r.status_code == 409, r.text


def _closed_port() -> int:
    from support.infra import free_port

    return free_port()


async def wait_uploaded(db, job_id: str, count: int, timeout: float = 40) -> list[dict]:
    async def uploaded() -> list[dict] | None:
        docs = await db[Collections.FILES].find({"entity_id": job_id}).to_list(None)
        done = [d for d in docs if (d.get("upload") or {}).get("state") == "uploaded"]
        return done if len(done) >= count else None

    return await eventually(uploaded, timeout=timeout, what=f"{count} uploaded files")


async def test_split_recording_uploads_then_range_archive_remove_and_retention(
    stack, db, s3_server, media_source_factory, tmp_path
):
    s3 = s3_server
    storage_id = await add_target(stack, s3, "recordings", prefix="live/")
    archive_id = await add_target(stack, s3, "cold")
    source = await media_source_factory("srt")
    await stack.start_recorder()
    await stack.start_janitor(**UPLOADER)
    body = recording_payload(
        1, active=True, output_format="mpegts", storage_id=storage_id,
        archive_storage_id=archive_id, archive_storage_class="GLACIER",
        recording_mode_settings={"hours": 0, "minutes": 0, "seconds": 2},
    )  # fmt: skip
    body["input"]["input_stream_url"] = source.url
    job_id = (await stack.ok("create", body))["id"]

    # Four: after one is archived and one removed, retention (max_files 1) still has one to
    # delete (with three, whether a fourth segment closed before the stop decided it).
    done = await wait_uploaded(db, job_id, 4, timeout=45)
    await stack.ok("stop", {"id": job_id})
    objects = s3.keys("recordings")
    for record in done:
        upload = record["upload"]
        assert upload["key"] == f"live/{job_id}/{record['file_name']}"
        assert objects[upload["key"]] == upload["size"] == record["size_bytes"] > 0
        assert upload["verified"] == "size+etag"
        # Queued by the recorder in the very write that made the file ready (upload_queued).
        assert upload["queued_at"] == record["ready_at"]

    # Local copies go after verification, never before.
    async def removed_locally() -> list[dict] | None:
        docs = await db[Collections.FILES].find({"entity_id": job_id}).to_list(None)
        gone = [d for d in docs if d.get("local_removed_at")]
        return gone if len(gone) >= 3 else None

    for record in await eventually(removed_locally, timeout=20, what="local copies removed"):
        assert not Path(record["file_path"]).exists()
        assert record["local_removed_at"] >= record["upload"]["verified_at"]

    # A presigned URL of the bucket serves a Range (the local copy is gone).
    first = done[0]
    answer = await stack.ok("getDownloadUrl", {"record_id": job_id, "file_id": str(first["_id"])})
    assert answer["provider"] == "other"
    assert answer["url"].startswith(s3.url)
    whole = s3.client().get_object(Bucket="recordings", Key=first["upload"]["key"])["Body"].read()
    async with httpx.AsyncClient() as http:
        ranged = await http.get(answer["url"], headers={"Range": "bytes=188-375"})
    assert ranged.status_code == 206, ranged.text
    assert ranged.content == whole[188:376]
    assert ranged.content[0] == 0x47  # a TS packet

    # Playback reads segments whose local copies are gone from the bucket (presigned, ranged).
    earliest = sorted(done, key=lambda d: d["file_name"])[:2]

    async def earliest_gone() -> bool:
        ids = [d["_id"] for d in earliest]
        docs = await db[Collections.FILES].find({"_id": {"$in": ids}}).to_list(None)
        return len(docs) == 2 and all(d.get("local_removed_at") for d in docs)

    await eventually(earliest_gone, timeout=20, what="the first two local copies removed")
    keys = [d["upload"]["key"] for d in earliest]

    def bucket_reads() -> int:
        return sum(len(s3.operations("GetObject", key)) for key in keys)

    reads_before = bucket_reads()
    timeline = await stack.ok("getPlayback", {"id": job_id})
    got = await stack.ok("getPlaybackUrl", {"id": job_id, "start": timeline["spans"][0]["start"],
                                            "duration": 3, "format": "ts"})  # fmt: skip
    played = await stack.client.get(got["url"])
    assert played.status_code == 200, played.text[:300]
    out = tmp_path / "from-the-bucket.ts"
    out.write_bytes(played.content)
    video, audio = av_streams(await ffprobe(out))
    assert (video["codec_name"], audio["codec_name"]) == ("h264", "aac")
    assert float(video.get("duration") or 0) >= 2.5, video
    await eventually(lambda: bucket_reads() > reads_before, timeout=5, what="reads of the bucket")

    # Archive moves the object to the archive target (server-side copy, same account).
    archived = await stack.ok("archiveFile", {"record_id": job_id, "file_id": str(first["_id"])})
    assert archived["status"] == "archived"
    assert archived["upload"]["storage_id"] == archive_id
    assert first["upload"]["key"] not in s3.keys("recordings")
    assert s3.keys("cold")[f"{job_id}/{first['file_name']}"] == first["upload"]["size"]
    assert s3.operations("CopyObject") or s3.operations("UploadPartCopy")

    # removeFile deletes the object as well as the record.
    second = done[1]
    await stack.ok("removeFile", {"record_id": job_id, "file_id": str(second["_id"])})
    assert second["upload"]["key"] not in s3.keys("recordings")
    assert await db[Collections.FILES].find_one({"_id": second["_id"]}) is None

    # Retention (the janitor's pass) deletes the objects of the files it removes.
    left = {d["upload"]["key"] for d in await _uploaded_records(db, job_id)}
    assert left
    assert left <= set(s3.keys("recordings"))
    await db[Collections.RECORDINGS].update_one(
        {"_id": ObjectId(job_id)}, {"$set": {"max_files": 1}}
    )
    report = await stack.api_ok("storage/cleanup")
    assert report["deleted"], report
    remaining = [d["upload"]["key"] for d in await _uploaded_records(db, job_id)]
    assert len(remaining) <= 1
    assert set(s3.keys("recordings")) == set(remaining)


async def _uploaded_records(db, job_id: str) -> list[dict]:
    docs = await db[Collections.FILES].find({"entity_id": job_id, "status": "ready"}).to_list(None)
    return [d for d in docs if (d.get("upload") or {}).get("state") == "uploaded"]


async def test_kill_9_mid_multipart_resumes_without_resending_finished_parts(stack, db, s3_server):
    s3 = s3_server
    storage_id = await add_target(stack, s3, "big")
    body = recording_payload(1, active=False, output_format="mpegts", storage_id=storage_id)
    job_id = (await stack.ok("create", body))["id"]
    # A closed 6-part file (5 MiB parts), as the recorder registers one.
    path = stack.storage_root / job_id / "big-2026-03-24_12-00-00.ts"
    path.parent.mkdir(parents=True)
    data = os.urandom(5 * 1024 * 1024 * 5 + 123_457)
    path.write_bytes(data)
    file_id = ObjectId()
    now = datetime.now(UTC)
    record = {"_id": file_id, "tenant": "default", "entity_id": job_id, "file_name": path.name,
              "file_path": str(path), "status": "ready", "size_bytes": len(data),
              "created": now, "modified": now}  # fmt: skip
    await db[Collections.FILES].insert_one(record)
    # 8 MiB/s: a part every ~0.65 s, so the kill lands mid-upload.
    throttled = {**UPLOADER, "REELHOUSE_UPLOAD_MAX_BPS": str(8 * 1024 * 1024)}
    first = await stack.start_janitor(**throttled, REELHOUSE_NODE_ID="janitor-a")

    async def two_parts_done() -> list[dict] | None:
        doc = await db[Collections.FILES].find_one({"_id": file_id})
        parts = ((doc or {}).get("upload") or {}).get("parts") or []
        return parts if len(parts) >= 2 else None

    await eventually(two_parts_done, timeout=30, what="2 parts uploaded")
    os.kill(first.pid, signal.SIGKILL)
    await first.proc.wait()
    before = (await db[Collections.FILES].find_one({"_id": file_id}))["upload"]
    assert before["state"] == "uploading"
    assert before.get("upload_id")
    finished_before = {p["n"] for p in before["parts"]}
    assert len(finished_before) < 6  # killed mid-upload

    second = await stack.start_janitor(**throttled, REELHOUSE_NODE_ID="janitor-a")
    (record,) = await wait_uploaded(db, job_id, 1, timeout=40)
    upload = record["upload"]
    md5s = [hashlib.md5(data[i : i + 5 * 1024 * 1024], usedforsecurity=False).digest()
            for i in range(0, len(data), 5 * 1024 * 1024)]  # fmt: skip
    assert upload["etag"] == f"{hashlib.md5(b''.join(md5s), usedforsecurity=False).hexdigest()}-6"
    assert upload["size"] == len(data) == s3.keys("big")[upload["key"]]
    got = s3.client().get_object(Bucket="big", Key=upload["key"])["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    sent_after = [json.loads(line)["part"] for line in second.output().splitlines()
                  if '"upload_part_sent"' in line]  # fmt: skip
    assert sent_after, second.output()[-2000:]
    assert not finished_before & set(sent_after), (finished_before, sent_after)
    # The bucket saw each part once, but at most the one in flight at the kill twice.
    puts = [line for line in s3.operations("UploadPart", upload["key"])]
    assert 6 <= len(puts) <= 7, len(puts)
    assert len(s3.operations("CreateMultipartUpload")) == 1  # resumed, not restarted
    assert s3.operations("ListParts")
    # Verified, then the local copy went (the job keeps none).
    await eventually(lambda: not path.exists(), timeout=10, what="local copy removed")


@pytest.mark.parametrize("removal", ["removeFile", "remove"])
async def test_a_file_removed_while_its_upload_runs_leaves_no_object(stack, db, s3_server, removal):
    """The gap the first part left (DECISIONS, "Object storage"): a removal does not wait for
    the upload's claim. Here the file is removed while its single PUT waits on the bandwidth
    cap, so the removal finds no object yet; the PUT lands after it. The uploader sees the
    record marked removed and deletes the object it put."""
    s3 = s3_server
    storage_id = await add_target(stack, s3, "inflight")
    body = recording_payload(1, active=False, output_format="mpegts", storage_id=storage_id)
    job_id = (await stack.ok("create", body))["id"]
    path = stack.storage_root / job_id / "late-2026-03-24_12-00-00.ts"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(1024 * 1024))
    file_id = ObjectId()
    now = datetime.now(UTC)
    await db[Collections.FILES].insert_one(
        {"_id": file_id, "tenant": "default", "entity_id": job_id, "file_name": path.name,
         "file_path": str(path), "status": "ready", "size_bytes": 1024 * 1024,
         "created": now, "modified": now}
    )  # fmt: skip
    # 512 KiB/s: the 1 MiB PUT waits ~2 s for its tokens after the upload has started.
    await stack.start_janitor(**UPLOADER, REELHOUSE_UPLOAD_MAX_BPS=str(512 * 1024))

    async def uploading() -> dict | None:
        doc = await db[Collections.FILES].find_one({"_id": file_id})
        upload = (doc or {}).get("upload") or {}
        return upload if upload.get("state") == "uploading" else None

    key = (await eventually(uploading, timeout=20, what="upload started"))["key"]
    assert not s3.operations("PutObject", key)  # still waiting on the cap
    if removal == "removeFile":
        await stack.ok("removeFile", {"record_id": job_id, "file_id": str(file_id)})
    else:
        await stack.ok("remove", {"id": job_id}, verb="DELETE")
    assert await db[Collections.FILES].find_one({"_id": file_id}) is None
    await eventually(lambda: bool(s3.operations("PutObject", key)), timeout=15,
                     what="the PUT that was in flight")  # fmt: skip
    await eventually(lambda: key not in s3.keys("inflight"), timeout=10,
                     what="the late object deleted by its uploader")  # fmt: skip
    assert s3.keys("inflight") == {}


async def _ready_record(db, job_id: str, path: Path, storage_id: str | None) -> dict[str, Any]:
    """A closed file's ready record, queued for ``storage_id`` as its writer queues it (or, with
    None, as an older writer left it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(64 * 1024))
    now = datetime.now(UTC)
    doc = {"_id": ObjectId(), "tenant": "default", "entity_id": job_id, "file_name": path.name,
           "file_path": str(path), "status": "ready", "size_bytes": 64 * 1024,
           "created": now, "modified": now, "ready_at": now,
           **upload_queued(storage_id, now)}  # fmt: skip
    await db[Collections.FILES].insert_one(doc)
    return doc


async def test_the_uploader_is_woken_by_file_ready_not_by_reading_the_archive(
    stack, db, s3_server, settings_env
):
    """With no repair pass for an hour, a file is uploaded because its ``file_ready`` event woke
    the uploader (queued by its writer, or by the uploader on the event when the writer left it
    unqueued); a ready record nobody queued or announced is not found by reading the archive."""
    s3 = s3_server
    storage_id = await add_target(stack, s3, "woken")
    body = recording_payload(1, active=False, output_format="mpegts", storage_id=storage_id)
    job_id = (await stack.ok("create", body))["id"]
    folder = stack.storage_root / job_id
    await _ready_record(db, job_id, folder / "a.ts", storage_id)
    await stack.start_janitor(**UPLOADER)
    await wait_uploaded(db, job_id, 1, timeout=30)  # its first pass is over

    settings = settings_from_env(JanitorSettings, settings_env)
    bus = Bus(settings, name="file-ready-test")
    await bus.start()
    try:
        assert await bus.wait_connected(timeout=10)

        async def announce(doc: dict[str, Any]) -> None:
            file = present_file(doc)
            message = build_event("file_ready", module="recording", job_id=job_id,
                                  tenant="default", node="test", file=file)  # fmt: skip
            await bus.publish(bus.subjects.event("recording", job_id, "file_ready"), message)

        silent = await _ready_record(db, job_id, folder / "b.ts", None)  # no event, not queued
        await announce(await _ready_record(db, job_id, folder / "c.ts", storage_id))
        await announce(await _ready_record(db, job_id, folder / "d.ts", None))
        done = await wait_uploaded(db, job_id, 3, timeout=30)
    finally:
        await bus.close()
    assert {d["file_name"] for d in done} == {"a.ts", "c.ts", "d.ts"}
    assert "upload" not in (await db[Collections.FILES].find_one({"_id": silent["_id"]}))


async def test_the_repair_pass_queues_a_ready_file_no_writer_or_event_queued(
    db, settings_env, tmp_path
):
    """The uploader in-process on the real database (no live plane: it claims nothing): a job's
    records are read once when the job is first seen, then only the indexed backlog, and one
    job's records in turn by the repair pass."""
    settings = settings_from_env(JanitorSettings, settings_env)
    storage_id = str(ObjectId())
    job_id = ObjectId()
    await db[Collections.RECORDINGS].insert_one(
        {"_id": job_id, "tenant": "default", "storage_id": storage_id, "keep_local": True}
    )
    up = Uploader(db=db, bus=None, live=None, settings=settings, node_id="janitor-r",
                  storage_root=tmp_path)  # fmt: skip
    files = db[Collections.FILES]
    older = await _ready_record(db, str(job_id), tmp_path / "older.ts", None)
    await up.scan()  # the job first seen: its records read once, the older one queued
    queued = await files.find_one({"_id": older["_id"]})
    assert queued["upload"]["state"] == "pending"
    assert queued["upload_backlog"] == storage_id

    missed = await _ready_record(db, str(job_id), tmp_path / "missed.ts", None)
    await up.scan()  # the backlog only
    assert "upload" not in (await files.find_one({"_id": missed["_id"]}))
    await up.scan(repair=True)
    repaired = await files.find_one({"_id": missed["_id"]})
    assert repaired["upload"]["state"] == "pending"
    assert repaired["upload_backlog"] == storage_id
    await asyncio.gather(*up.running.values(), return_exceptions=True)
