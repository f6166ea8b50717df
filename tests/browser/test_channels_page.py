"""The dashboard's Channels page in headless Chromium against a real stack (issue 22).

Real nats-server, FerretDB, prober (streamlink), recorder and FFmpeg; the API serves the page
over HTTP; the channel is a live HLS origin that the test starts and stops. An operator adds a
channel through the form (a bad URL is refused next to its field), sees it go live and record
with the stream's title, sees the channel events arrive over the WebSocket, checks it now,
edits it, sees the broadcast's recording become ready when the origin stops and plays it, and
removes the channel. A viewer sees the channels without the operator's buttons. Screenshots
land in docs/screenshots/.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect
from support.media import HlsSource
from support.services import ServiceProcess
from test_dashboard import WAIT_MS, recorder_ready, screenshot_path, sign_in

from reelhouse.common.mongo import Collections

pytestmark = pytest.mark.slow

TITLE = "Chess finals"
FAST_CHANNELS = {
    "REELHOUSE_CHANNEL_INTERVAL_S": "1",
    "REELHOUSE_CHANNEL_GRACE_S": "3",
    "REELHOUSE_CHANNEL_CHECK_TIMEOUT_S": "5",
    "REELHOUSE_CHANNEL_RECONCILE_S": "1",
    "REELHOUSE_NODE_ID": "prober-1",
}


def channel_row(page: Page, name: str):
    return page.locator(f'[data-testid="channel-row"][data-name="{name}"]')


@pytest.mark.timeout(240)
async def test_channels_page_adds_a_channel_that_records_its_broadcast(
    stack, db, browser, dashboard, account, page, tmp_path
):
    await stack.start_recorder()
    prober = ServiceProcess("prober", {**stack.env, **FAST_CHANNELS}, stack.tmp / "prober.log")
    await prober.start()
    stack.janitors.append(prober)  # stopped with the stack
    origin = HlsSource(workdir=tmp_path / "origin", metadata={"service_name": TITLE})
    await origin.start()
    try:
        operator = await account("operator")
        await page.goto("/#/channels")
        await sign_in(page, operator.username, operator.password)
        view = page.get_by_test_id("channels-view")
        await expect(view).to_be_visible()
        await expect(view.get_by_test_id("socket-state")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )
        await recorder_ready(db)

        # A local file is refused by the API, next to the URL field; nothing is added.
        await page.get_by_test_id("new-channel").click()
        form = page.get_by_test_id("channel-form")
        await form.get_by_label("Name").fill("Chess-club")
        await form.get_by_label("Channel URL").fill("file:///etc/passwd")
        await form.get_by_test_id("save").click()
        await expect(form.locator('[data-error-for="url"]')).not_to_be_empty()
        await expect(page.get_by_test_id("channel-row")).to_have_count(0)

        # The live origin: added, found live, recorded with the stream's title.
        await form.get_by_label("Channel URL").fill(origin.url)
        await form.get_by_test_id("save").click()
        await expect(form).to_be_hidden()
        row = channel_row(page, "Chess-club")
        await expect(row.locator("[data-state]")).to_have_attribute(
            "data-state", "recording", timeout=WAIT_MS
        )
        await expect(row.get_by_test_id("live-title")).to_have_text(TITLE)
        # The channel's events came over the WebSocket (the poll does not bring events).
        events = page.get_by_test_id("channel-events")
        await expect(events.locator('[data-type="recording_started"]')).to_have_count(1)
        await expect(events.locator('[data-type="recording_started"]')).to_contain_text(TITLE)

        # Check now: the prober's answer in the notice bar.
        await row.get_by_test_id("check").click()
        await expect(page.locator("#notice")).to_contain_text(f"Chess-club is live: “{TITLE}”")
        await row.get_by_test_id("recordings").click()
        recording = page.get_by_test_id("channel-recording-row")
        await expect(recording).to_have_count(1, timeout=WAIT_MS)
        await expect(recording).to_have_attribute("data-status", "recording")
        await expect(recording.get_by_test_id("recording-title")).to_have_text(TITLE)
        await page.screenshot(path=screenshot_path("channels"), full_page=True)

        # Edit: a title filter that the next broadcast would not pass; the name changes too.
        await row.get_by_test_id("edit").click()
        form = page.get_by_test_id("channel-form")
        await expect(form.get_by_label("Channel URL")).to_have_value(origin.url)
        await form.get_by_label("Name").fill("Chess-club-2")
        await form.get_by_label("Title includes").fill("speedrun")
        await form.get_by_test_id("save").click()
        await expect(form).to_be_hidden()
        row = channel_row(page, "Chess-club-2")
        await expect(row).to_have_count(1)

        # The origin stops: past the grace period the recording ends, is processed and plays.
        await origin.stop()
        await expect(events.locator('[data-type="recording_ended"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        ready = page.locator('[data-testid="channel-recording-row"][data-status="ready"]')
        await expect(ready).to_have_count(1, timeout=WAIT_MS)
        seconds = float(await ready.get_by_test_id("recording-duration").get_attribute(
            "data-seconds") or 0)  # fmt: skip
        assert seconds > 1
        await expect(row.locator("[data-state]")).to_have_attribute(
            "data-state", "offline", timeout=WAIT_MS
        )
        await ready.get_by_test_id("play").click()
        await page.wait_for_function(
            """() => { const v = document.querySelector('video[data-testid=player]');
                return v && v.readyState >= 2 && v.currentTime > 0.5; }""",
            timeout=WAIT_MS,
        )

        # Live again, but the edited filter says no: a filter_skip, shown as it happens.
        await origin.start()
        skip = events.locator('[data-type="filter_skip"]')
        await expect(skip).to_have_count(1, timeout=WAIT_MS)
        await expect(skip).to_contain_text("title_include")
        await expect(row.locator("[data-state]")).to_have_attribute("data-state", "live")
        await page.screenshot(path=screenshot_path("channels-events"), full_page=True)

        # A viewer sees the channel and its recordings, and none of the operator's buttons.
        viewer = await account("viewer")
        other = await browser.new_context(base_url=dashboard.url)
        try:
            seen = await other.new_page()
            await seen.goto("/#/channels")
            await sign_in(seen, viewer.username, viewer.password)
            viewer_row = channel_row(seen, "Chess-club-2")
            await expect(viewer_row).to_have_count(1)
            for testid in ("check", "edit", "remove", "stop"):
                await expect(viewer_row.get_by_test_id(testid)).to_have_count(0)
            await expect(seen.get_by_test_id("new-channel")).to_have_count(0)
            await viewer_row.get_by_test_id("recordings").click()
            await expect(seen.get_by_test_id("channel-recording-row")).to_have_count(1)
        finally:
            await other.close()

        # Remove: the row goes, and so do its recordings.
        await row.get_by_test_id("remove").click()
        await expect(page.get_by_test_id("channel-row")).to_have_count(0, timeout=WAIT_MS)
        await expect(page.get_by_test_id("channel-recording-row")).to_have_count(0)
        assert await db[Collections.CHANNEL_RECORDINGS].count_documents({}) == 0
        assert page.errors == []
    finally:
        await origin.aclose()
