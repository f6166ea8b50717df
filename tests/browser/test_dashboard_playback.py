"""The dashboard's Playback view: a recording's spans and gaps, and its HLS VOD playlist (signed,
a program date-time on every segment) playing in hls.js, seekable by wall-clock time. The
segments are cut by FFmpeg from a lavfi source and registered as a split recording's files (a
live recording is what tests/integration/test_playback.py does); the playback file of a range is
also fetched over real HTTP and dropped half-way: the API's FFmpeg for it goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from playwright.async_api import expect
from support.media import ffmpeg_children
from support.playback import cut_segments, register_segments
from support.seeds import recording_payload
from support.stack import HEADERS
from support.wait import eventually

WAIT_MS = 30_000


async def test_playback_view_plays_the_hls_vod_playlist_and_seeks_by_wall_clock(
    stack, db, dashboard, page, account, tmp_path
):
    job_id = (await stack.ok("create", recording_payload(1, active=False,
                                                        output_format="mpegts")))["id"]  # fmt: skip
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    cut = await cut_segments(tmp_path / "cut", count=6, seconds=2, size="320x180")
    folder = stack.storage_root.resolve() / job_id
    folder.mkdir(parents=True)
    await register_segments(db, job_id=job_id, folder=folder, segments=cut, seconds=2,
                            start=start, gap_after=3, gap_s=4)  # fmt: skip

    user = await account("viewer")
    await page.goto("/")
    await page.get_by_test_id("username").fill(user.username)
    await page.get_by_test_id("password").fill(user.password)
    await page.get_by_test_id("sign-in-button").click()
    row = page.locator(f'tr[data-id="{job_id}"]')
    await row.get_by_test_id("playback").click()
    view = page.get_by_test_id("playback-view")
    await expect(view.get_by_test_id("span-row")).to_have_count(2)
    await expect(view.get_by_test_id("gap-row")).to_have_count(1)
    await expect(view.get_by_test_id("gap-row")).to_contain_text("interruption")
    await page.get_by_test_id("playback-play").click()
    await page.wait_for_function(
        """() => { const v = document.querySelector('video[data-testid=playback-player]');
            return v && v.readyState >= 2 && v.currentTime > 0.5; }""",
        timeout=WAIT_MS,
    )
    clock = page.get_by_test_id("playback-clock")
    await expect(clock).to_contain_text(start.strftime("%Y-%m-%dT%H:%M"))
    # Seek to a time after the gap: the player's wall clock says it.
    after_gap = start + timedelta(seconds=3 * 2 + 4 + 1)
    await page.get_by_test_id("playback-seek").fill(after_gap.isoformat())
    await page.get_by_test_id("playback-go").click()
    await page.wait_for_function(
        """(at) => { const t = document.querySelector('[data-testid=playback-clock]').textContent;
            return t && Math.abs(Date.parse(t) - at) < 1500; }""",
        arg=after_gap.timestamp() * 1000,
        timeout=WAIT_MS,
    )
    assert page.errors == []

    # A client that goes away half-way: the FFmpeg that made its file is gone soon after.
    body = {"id": job_id, "start": start.isoformat(), "duration": 20, "format": "ts",
            "precise": True}  # fmt: skip
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as client:
        url = (await client.post("/api/recording/getPlaybackUrl", json=body,
                                 headers=HEADERS)).json()["url"]  # fmt: skip
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            async for _chunk in response.aiter_raw():
                assert ffmpeg_children(dashboard.api.pid)  # making it
                break
    await eventually(lambda: not ffmpeg_children(dashboard.api.pid), timeout=10,
                     what="the playback FFmpeg to be killed")  # fmt: skip
