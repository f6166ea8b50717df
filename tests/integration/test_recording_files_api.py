"""Recorded files: getFiles, signed downloads with HTTP Range, the archive tier (issue 6)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.events import Events
from support.seeds import recording_payload
from support.stack import running_stack
from support.wait import eventually

from reelhouse.api.files.signing import download_url
from reelhouse.common.mongo import Collections

T0 = datetime(2026, 3, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real 2 s H.264 MP4 (a few tens of KB)."""
    out = tmp_path_factory.mktemp("media") / "out.mp4"
    subprocess.run(
        [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-f", "lavfi",
         "-i", "testsrc2=d=2:s=320x240:r=15", "-c:v", "libx264", "-preset", "ultrafast",
         "-f", "mp4", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    data = out.read_bytes()
    assert len(data) > 1000
    return data


@pytest.fixture
async def stack(service_env, tmp_path):
    env = {**service_env, "REELHOUSE_ARCHIVE_ROOT": str(tmp_path / "archive")}
    async with running_stack(env, tmp_path) as s:
        yield s


async def add_file(
    stack: Any,
    db: Any,
    job_id: str,
    name: str,
    *,
    status: str = "ready",
    data: bytes = b"",
    created: datetime = T0,
    tenant: str = "default",
) -> str:
    """A file record of the job, and (if ``data``) its bytes under the storage root."""
    path = stack.storage_root / job_id / name
    if data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    doc = {
        "tenant": tenant, "file_name": name, "file_path": str(path), "entity_id": job_id,
        "status": status, "size_bytes": len(data), "duration_ms": 2000,
        "output_format": Path(name).suffix.lstrip("."), "created": created, "modified": created,
    }  # fmt: skip
    return str((await db[Collections.FILES].insert_one(doc)).inserted_id)


async def new_job(stack: Any) -> str:
    return (await stack.ok("create", recording_payload(0, active=False)))["id"]


async def url_of(stack: Any, job_id: str, file_id: str) -> str:
    answer = await stack.ok("getDownloadUrl", {"record_id": job_id, "file_id": file_id})
    return answer["url"]


def secret_of(stack: Any) -> str:
    return stack.client.app.state.download_secret


async def test_get_files_filters_paging_meta_tenant_and_deleted(stack, db):
    a, b = await new_job(stack), await new_job(stack)
    ids = [
        await add_file(stack, db, a, f"a{i}.mp4", created=T0 + timedelta(minutes=i))
        for i in range(5)
    ]
    rec = await add_file(stack, db, b, "b.mp4", status="recording", created=T0 + timedelta(hours=1))
    gone = await add_file(stack, db, b, "gone.mp4", status="deleted", created=T0)
    await add_file(stack, db, a, "other.mp4", tenant="someone-else", created=T0)

    everything = await stack.ok("getFiles")
    assert everything["meta"] == {"total": 6, "limit": 50, "offset": 0}
    assert [f["id"] for f in everything["data"]] == [rec, *reversed(ids)]  # newest first
    first = everything["data"][1]
    assert first["_id"] == first["id"] == ids[4]
    assert first["created"] == "2026-03-24T12:04:00.000Z"
    assert first["status"] == "ready"
    assert "tenant" not in first

    page = await stack.ok("getFiles", {"record_id": a, "limit": 2, "offset": 1})
    assert page["meta"] == {"total": 5, "limit": 2, "offset": 1}
    assert [f["id"] for f in page["data"]] == [ids[3], ids[2]]
    assert (await stack.ok("getFiles", {"status": "recording"}))["data"][0]["id"] == rec
    deleted = await stack.ok("getFiles", {"status": "deleted"})
    assert [f["id"] for f in deleted["data"]] == [gone]
    window = {"from": "2026-03-24T12:01:00Z", "to": "2026-03-24T12:03:00Z"}
    assert [f["id"] for f in (await stack.ok("getFiles", window))["data"]] == [ids[2], ids[1]]
    naive = {"from": "2026-03-24T12:04:00"}  # read as UTC
    assert (await stack.ok("getFiles", naive))["meta"]["total"] == 2
    assert (await stack.ok("getFiles", {"record_id": str(ObjectId())}))["data"] == []

    for body, field in [
        ({"limit": 1001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"status": "READY"}, "status"),
        ({"status": {"$ne": "x"}}, "status"),
        ({"record_id": {"$gt": ""}}, "record_id"),
        ({"record_id": "nope"}, "record_id"),
        ({"from": "yesterday"}, "from"),
        ({"from": {"$gt": 1}}, "from"),
        ({"from": "2026-03-24T12:00:00Z", "to": "2026-03-24T11:00:00Z"}, "to"),
        ({"$where": "1"}, "$where"),
    ]:
        r = await stack.call("getFiles", body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "VALIDATION_ERROR", (body, error)
        assert error["field"] == field, (body, error)


async def test_get_download_url_by_status(stack, db, media):
    job = await new_job(stack)
    ready = await add_file(stack, db, job, "ready.mp4", data=media)
    answer = await stack.ok("getDownloadUrl", {"record_id": job, "file_id": ready})
    assert answer["url"].startswith(f"/api/recording/download/{ready}?expires=")
    expires = datetime.fromisoformat(answer["expires"].replace("Z", "+00:00"))
    assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    r = await stack.client.get(answer["url"])  # no token: the signature is the authority
    assert r.status_code == 200
    assert r.content == media

    for status in ("recording", "processing"):
        fid = await add_file(stack, db, job, f"{status}.mp4", status=status)
        assert await stack.ok("getDownloadUrl", {"record_id": job, "file_id": fid}) == {
            "status": status,
            "message": "the file is still being written/processed; ask again when it is ready",
        }
    for status in ("failed", "deleted"):
        fid = await add_file(stack, db, job, f"{status}.mp4", status=status)
        r = await stack.call("getDownloadUrl", {"record_id": job, "file_id": fid})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["field"] == "file_id"
        assert r.json()["error"]["code"] == "CONFLICT"
    r = await stack.call("getDownloadUrl", {"record_id": job, "file_id": str(ObjectId())})
    assert r.status_code == 404
    assert r.json()["error"]["field"] == "file_id"
    other = await new_job(stack)  # a file asked for through another job is not found
    r = await stack.call("getDownloadUrl", {"record_id": other, "file_id": ready})
    assert r.status_code == 404
    r = await stack.client.post("/api/recording/getDownloadUrl",
                                json={"record_id": job, "file_id": ready})  # fmt: skip
    assert r.status_code == 401


async def test_download_full_and_ranges(stack, db, media):
    job = await new_job(stack)
    fid = await add_file(stack, db, job, "main-2026-03-24_12-00-00.mp4", data=media)
    url = await url_of(stack, job, fid)
    size = len(media)

    r = await stack.client.get(url)
    assert r.status_code == 200
    assert r.content == media
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["content-disposition"] == (
        'attachment; filename="main-2026-03-24_12-00-00.mp4"'
    )

    r = await stack.client.get(url, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206
    assert r.content == media[:100]
    assert len(r.content) == 100
    assert r.headers["content-range"] == f"bytes 0-99/{size}"
    assert r.headers["content-length"] == "100"

    r = await stack.client.get(url, headers={"Range": "bytes=-10"})
    assert r.status_code == 206
    assert r.content == media[-10:]
    assert r.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"

    r = await stack.client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206
    assert r.content == media[1000:]

    r = await stack.client.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416, r.text
    assert r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"

    r = await stack.client.head(url)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(size)


async def test_bad_tampered_and_expired_urls_are_forbidden(stack, db, media):
    job = await new_job(stack)
    fid = await add_file(stack, db, job, "a.mp4", data=media)
    other = await add_file(stack, db, job, "b.mp4", data=media)
    url = await url_of(stack, job, fid)
    path, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    sig, expires = params["signature"], int(params["expires"])
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    expired = download_url(secret_of(stack), fid, int(time.time()) - 1)

    for bad in [
        f"{path}?expires={expires}&signature={flipped}",  # tampered signature
        f"/api/recording/download/{other}?{query}",  # tampered file id
        f"{path}?expires={expires + 3600}&signature={sig}",  # tampered expiry
        f"{path}?expires={expires}",  # no signature
        path,  # nothing
        f"{path}?expires=soon&signature={sig}",
        expired,  # signed correctly, in the past
        download_url("not-the-server-secret-0123456789", fid, expires),
    ]:
        r = await stack.client.get(bad, headers={"Range": "bytes=0-99"})
        assert r.status_code == 403, (bad, r.text)
        assert r.json()["success"] is False
        assert r.json()["error"]["code"] == "FORBIDDEN"

    # A valid signature of a file that is gone is a 404, not the bytes of something else.
    await db[Collections.FILES].update_one({"_id": ObjectId(fid)}, {"$set": {"status": "deleted"}})
    r = await stack.client.get(url)
    assert r.status_code == 404


async def test_archive_moves_the_file_and_downloads_keep_working(stack, db, media):
    job = await new_job(stack)
    fid = await add_file(stack, db, job, "a.mp4", data=media)
    source = stack.storage_root / job / "a.mp4"
    async with Events(stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
        archived = await stack.ok("archiveFile", {"record_id": job, "file_id": fid})
        await eventually(
            lambda: "file_archived" in ev.types(job), timeout=5, what="file_archived event"
        )
    archive = stack.tmp / "archive" / job / "a.mp4"
    assert archived["status"] == "archived"
    assert archived["id"] == fid
    assert archived["file_path"] == str(archive.resolve())
    assert archived["archived_at"].endswith("Z")
    assert not source.exists()
    assert archive.read_bytes() == media
    event = next(e for e in ev.received if e["type"] == "file_archived")
    assert event["file"]["status"] == "archived"
    assert event["module"] == "recording"

    listed = await stack.ok("getFiles", {"status": "archived"})
    assert [f["id"] for f in listed["data"]] == [fid]
    url = await url_of(stack, job, fid)
    r = await stack.client.get(url, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206
    assert r.content == media[:100]
    assert (await stack.client.get(url)).content == media

    # Only ready files: an archived one, a recording one → 400 naming file_id with the status.
    recording = await add_file(stack, db, job, "rec.mp4", status="recording", data=b"x" * 10)
    for target, status in [(fid, "archived"), (recording, "recording")]:
        r = await stack.call("archiveFile", {"record_id": job, "file_id": target})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["field"] == "file_id"
        assert status in error["message"]
    r = await stack.call("archiveFile", {"record_id": job, "file_id": str(ObjectId())})
    assert r.status_code == 404


async def test_archive_of_a_playlist_moves_its_segments(stack, db):
    job = await new_job(stack)
    folder = stack.storage_root / job
    folder.mkdir(parents=True)
    for seg in ("p0.ts", "p1.ts"):
        (folder / seg).write_bytes(b"\x47" * 188)
    playlist = "#EXTM3U\n#EXTINF:2.0,\np0.ts\n#EXTINF:2.0,\np1.ts\n#EXT-X-ENDLIST\n"
    fid = await add_file(stack, db, job, "p.m3u8", data=playlist.encode())
    await stack.ok("archiveFile", {"record_id": job, "file_id": fid})
    archive = stack.tmp / "archive" / job
    assert sorted(p.name for p in archive.iterdir()) == ["p.m3u8", "p0.ts", "p1.ts"]
    assert sorted(p.name for p in folder.iterdir()) == []
    r = await stack.client.get(await url_of(stack, job, fid))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"


async def test_two_concurrent_archive_calls_move_the_file_once(stack, db, media):
    job = await new_job(stack)
    fid = await add_file(stack, db, job, "a.mp4", data=media)
    body = {"record_id": job, "file_id": fid}
    results = await asyncio.gather(*(stack.call("archiveFile", body) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 400], [r.text for r in results]
    assert (stack.tmp / "archive" / job / "a.mp4").read_bytes() == media
    record = await db[Collections.FILES].find_one({"_id": ObjectId(fid)})
    assert record["status"] == "archived"


async def test_failed_move_puts_the_file_back_to_ready(stack, db, media):
    job = await new_job(stack)
    fid = await add_file(stack, db, job, "a.mp4", data=media)
    (stack.tmp / "archive" / job).mkdir(parents=True)
    (stack.tmp / "archive" / job / "a.mp4").write_bytes(b"in the way")
    r = await stack.call("archiveFile", {"record_id": job, "file_id": fid})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["field"] == "file_id"
    record = await db[Collections.FILES].find_one({"_id": ObjectId(fid)})
    assert record["status"] == "ready"
    assert (stack.storage_root / job / "a.mp4").read_bytes() == media


async def test_remove_file_and_remove_job_clean_the_archive_too(stack, db, media):
    job = await new_job(stack)
    kept = await add_file(stack, db, job, "a.mp4", data=media)
    dropped = await add_file(stack, db, job, "b.mp4", data=media)
    for fid in (kept, dropped):
        await stack.ok("archiveFile", {"record_id": job, "file_id": fid})
    archive = stack.tmp / "archive" / job
    await stack.ok("removeFile", {"record_id": job, "file_id": dropped})
    assert sorted(p.name for p in archive.iterdir()) == ["a.mp4"]
    await stack.ok("remove", {"id": job}, verb="DELETE")
    assert not archive.exists()
    assert await db[Collections.FILES].count_documents({}) == 0
