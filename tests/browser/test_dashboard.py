"""The operator dashboard in headless Chromium against a real stack (issue 9).

Real nats-server, FerretDB, recorder and FFmpeg; the API serves the page over HTTP; the source is
a live SRT feed. The test signs in, is refused a bad URL by the API (shown by the field), records
through the form, sees live bitrate and the thumbnail, stops, sees the file ready and plays it.
Screenshots of the main views land in docs/screenshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect
from support.services import ServiceProcess
from support.stack import TOKEN
from support.wait import eventually

from reelhouse.common.mongo import Collections

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


async def recorder_ready(db) -> None:
    async def ready() -> bool:
        query = {"service": "recorder", "state": "running"}
        return await db[Collections.NODES].count_documents(query) >= 1

    await eventually(ready, timeout=30, what="a recorder node")


async def test_dashboard_records_a_live_srt_source_and_plays_the_file(
    stack, db, srt_source, dashboard, page
):
    await stack.start_recorder()
    await stack.start_janitor()  # one more node for the System view
    prober = ServiceProcess("prober", {**stack.env, "REELHOUSE_NODE_ID": "prober-1"},
                            stack.tmp / "prober.log")  # fmt: skip
    await prober.start()
    stack.janitors.append(prober)  # stopped with the stack
    await page.goto("/")

    # Sign in: a wrong token is refused by the field, the right one kept for this tab.
    await page.get_by_test_id("token").fill("not-the-token-at-all")
    await page.get_by_test_id("sign-in-button").click()
    await expect(page.locator('[data-error-for="token"]')).to_contain_text("invalid access token")
    await page.get_by_test_id("token").fill(TOKEN)
    await page.get_by_test_id("sign-in-button").click()
    await expect(page.get_by_test_id("recordings-view")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('reelhouse.token')") == TOKEN
    await recorder_ready(db)

    # A bad URL: the API's validation error shows next to the URL field, nothing is created.
    await page.get_by_test_id("new-recording").click()
    form = page.get_by_test_id("recording-form")
    await form.get_by_label("Name").fill("Browser-archive")
    await form.get_by_label("Input URL").fill("http://127.0.0.1:9/live")
    await form.get_by_test_id("save").click()
    url_error = form.locator('[data-error-for="input.input_stream_url"]')
    await expect(url_error).to_contain_text("INPUT_TYPE_SRT_URL takes srt:// URLs, not http:")
    await form.screenshot(path=screenshot_path("recording-form-error"))
    assert (await stack.ok("getCount", {}))["count"] == 0

    # The same form with the live SRT source: created, enabled at once.
    await form.get_by_label("Input URL").fill(srt_source.url)
    await form.get_by_test_id("save").click()
    await expect(form).to_be_hidden()
    row = page.locator('[data-testid="recording-row"][data-name="Browser-archive"]')
    state = row.locator("[data-state]")
    await expect(state).to_have_attribute("data-state", "running", timeout=WAIT_MS)

    # Live bitrate above zero (getStat, polled every 3 s) and a thumbnail from the recorder.
    await page.wait_for_function(
        """() => Number(document.querySelector(
              '[data-testid=recording-row][data-name="Browser-archive"] [data-testid=bitrate]'
           )?.dataset.kbits) > 0""",
        timeout=WAIT_MS,
    )
    await page.wait_for_function(
        """() => { const img = document.querySelector(
              '[data-testid=recording-row][data-name="Browser-archive"] img[data-testid=thumb]');
            return img && img.complete && img.naturalWidth >= 160; }""",
        timeout=WAIT_MS,
    )
    await expect(row.get_by_test_id("fps")).not_to_have_text("\N{EN DASH}")
    # Two polls more: the sparkline has a line.
    tick = int(await page.evaluate("document.body.dataset.lastPoll"))
    await page.wait_for_function(f"Number(document.body.dataset.lastPoll) >= {tick + 2}")
    await expect(row.locator(".sparkline polyline")).to_have_count(1)
    await page.screenshot(path=screenshot_path("recordings"))

    # Stop: the button turns into Start at once, the badge follows the worker.
    await row.get_by_test_id("stop").click()
    await expect(row.get_by_test_id("start")).to_be_visible(timeout=3_000)
    await expect(state).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)

    # The file is listed, becomes ready, and plays in the page (ranged, signed URL).
    await row.get_by_test_id("files").click()
    ready = page.locator('[data-testid="file-row"][data-status="ready"]')
    await expect(ready).to_have_count(1, timeout=WAIT_MS)
    await expect(ready).to_contain_text(".mp4")
    await ready.get_by_test_id("play").click()
    video = page.get_by_test_id("player")
    await expect(video).to_be_visible()
    await page.wait_for_function(
        """() => { const v = document.querySelector('video[data-testid=player]');
            return v && v.readyState >= 2 && v.currentTime > 0.5; }""",
        timeout=WAIT_MS,
    )
    assert await video.evaluate("v => v.duration") > 2
    await page.screenshot(path=screenshot_path("recording-files-player"), full_page=True)

    # The other views render from the same live data.
    await page.get_by_test_id("nav-restreams").click()
    await expect(page.get_by_test_id("restreams-view")).to_be_visible()
    await page.get_by_test_id("new-restream").click()
    await page.screenshot(path=screenshot_path("restreams"))
    # The inspector: getStreamInfo's tracks in a table (the source is free again).
    await page.get_by_test_id("nav-streams").click()
    inspector = page.get_by_test_id("inspector")
    await inspector.get_by_label("Inspect a live URL").fill(srt_source.url)
    await inspector.get_by_role("button", name="Inspect").click()
    tracks = page.get_by_test_id("stream-info").get_by_test_id("track-row")
    await expect(tracks).to_have_count(2, timeout=WAIT_MS)
    await expect(tracks.first).to_contain_text("h264")
    await expect(tracks.first).to_contain_text("640\N{MULTIPLICATION SIGN}360")
    await page.screenshot(path=screenshot_path("streams"))
    await page.get_by_test_id("nav-system").click()
    await expect(page.get_by_test_id("storage-gauge")).to_be_visible()
    await expect(page.get_by_test_id("node-row").first).to_be_visible()
    feed = page.get_by_test_id("system-view").get_by_test_id("events-feed")
    await expect(feed).to_contain_text("Browser-archive")
    await page.screenshot(path=screenshot_path("system"))
    assert page.errors == []
