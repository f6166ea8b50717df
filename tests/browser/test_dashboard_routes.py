"""The routes the dashboard adds, over HTTP without a browser: the page and its modules, the
live thumbnail, and an m3u8 recording served to hls.js (real recorder, FFmpeg, live SRT)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from support.seeds import recording_payload
from support.stack import HEADERS, TOKEN
from support.wait import eventually

from reelhouse.common.ffmpeg.recording_args import THUMBNAIL_FILE_NAME
from reelhouse.common.files import job_dir

QUERY = f"?token={quote(TOKEN)}"


async def test_page_and_modules_are_served_and_nothing_else(stack):
    page = await stack.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/app.js">' in page.text
    for asset in ("app.js", "api.js", "ingest.js", "live.js", "style.css",
                  "vendor/hls.js/hls.light.min.mjs"):  # fmt: skip
        r = await stack.client.get(f"/dashboard/{asset}")
        assert r.status_code == 200, asset
    hls = await stack.client.get("/dashboard/vendor/hls.js/hls.light.min.mjs")
    assert hls.headers["content-type"].startswith("text/javascript")
    for bad in ("../routes/dashboard.py", "vendor/hls.js/LICENSE", "nope.js", "%2e%2e/app.py"):
        r = await stack.client.get(f"/dashboard/{bad}")
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_thumbnail_needs_the_token_and_a_picture(stack):
    created = await stack.ok("create", recording_payload(0, active=False))
    url = f"/api/recording/thumbnail?id={created['id']}"
    assert (await stack.client.get(url)).status_code == 401
    missing = await stack.client.get(url + f"&token={quote(TOKEN)}")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "id"
    folder = job_dir(stack.storage_root, created["id"])
    folder.mkdir(parents=True)
    (folder / THUMBNAIL_FILE_NAME).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shown = await stack.client.get(url, headers=HEADERS)
    assert shown.status_code == 200
    assert shown.headers["content-type"] == "image/jpeg"
    assert shown.headers["cache-control"] == "no-store"
    other = await stack.client.get(f"{url[:-24]}{'0' * 24}", headers=HEADERS)
    assert other.status_code == 404


@pytest.mark.slow
async def test_an_m3u8_recording_plays_through_the_play_route(stack, srt_source):
    await stack.start_recorder()
    body = recording_payload(2, active=True)
    body["input"]["input_stream_url"] = srt_source.url
    job_id = (await stack.ok("create", body))["id"]

    async def segments() -> bool:
        files = (await stack.ok("getFiles", {"record_id": job_id}))["data"]
        return bool(files) and len(list(job_dir(stack.storage_root, job_id).glob("*.ts"))) >= 2

    await eventually(segments, timeout=40, what="two HLS segments", interval=0.3)
    await stack.ok("stop", {"id": job_id})

    async def ready() -> dict:
        files = (await stack.ok("getFiles", {"record_id": job_id}))["data"]
        return files[0] if files and files[0]["status"] == "ready" else {}

    record = await eventually(ready, timeout=30, what="the playlist ready", interval=0.3)
    base = f"/api/recording/play/{record['id']}"
    playlist = await stack.client.get(f"{base}/{record['file_name']}{QUERY}")
    assert playlist.status_code == 200, playlist.text
    assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
    lines = [ln for ln in playlist.text.splitlines() if ln and not ln.startswith("#")]
    assert lines
    assert all(ln.endswith(QUERY) for ln in lines)
    segment = lines[0].removesuffix(QUERY)
    ts = await stack.client.get(f"{base}/{segment}{QUERY}")
    assert ts.status_code == 200
    assert ts.headers["content-type"] == "video/mp2t"
    assert ts.content[:1] == b"G"  # MPEG-TS sync byte
    plain = await stack.client.get(f"{base}/{record['file_name']}", headers=HEADERS)
    assert QUERY not in plain.text  # header callers get the file as written
    for name in ("nothing.ts", ".thumb-%25d.jpg", "..%2Fx.ts"):
        assert (await stack.client.get(f"{base}/{name}{QUERY}")).status_code == 404, name
    assert (await stack.client.get(f"{base}/{record['file_name']}")).status_code == 401
