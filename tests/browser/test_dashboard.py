"""The operator dashboard in headless Chromium against a real stack (issue 9).

Real nats-server, FerretDB, recorder and FFmpeg; the API serves the page over HTTP; the source is
a live SRT feed. The test signs in with a username and password (issue 20, item 5: the refresh
token in an HttpOnly cookie, the access token in memory only), is refused a bad URL by the API
(shown by the field), records through the form, sees live bitrate and the thumbnail, reloads and
stays signed in, stops, sees the file ready, plays it, and signs out for good. A viewer sees no
button it may not use. Screenshots of the main views land in docs/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from support.seeds import recording_payload, restream_payload
from support.services import ServiceProcess
from support.stack import HEADERS
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


COOKIE = "reelhouse_refresh"


async def sign_in(page: Page, username: str, password: str) -> None:
    await page.get_by_test_id("username").fill(username)
    await page.get_by_test_id("password").fill(password)
    await page.get_by_test_id("sign-in-button").click()


async def refresh_cookie(page: Page) -> dict[str, Any] | None:
    cookies = await page.context.cookies()
    return next((c for c in cookies if c["name"] == COOKIE), None)


async def assert_no_token_in_web_storage(page: Page) -> None:
    stored = await page.evaluate(
        """() => [localStorage, sessionStorage].flatMap(s =>
             Array.from({length: s.length}, (_, i) => [s.key(i), s.getItem(s.key(i))]))"""
    )
    assert stored == []
    assert COOKIE not in await page.evaluate("document.cookie")  # HttpOnly: not for scripts


async def test_dashboard_records_a_live_srt_source_and_plays_the_file(
    stack, db, srt_source, dashboard, account, page
):
    await stack.start_recorder()
    await stack.start_janitor()  # one more node for the System view
    prober = ServiceProcess("prober", {**stack.env, "REELHOUSE_NODE_ID": "prober-1"},
                            stack.tmp / "prober.log")  # fmt: skip
    await prober.start()
    stack.janitors.append(prober)  # stopped with the stack
    await page.goto("/")

    # Sign in: a wrong password is refused by the field; the right one gives a session whose
    # refresh token is an HttpOnly cookie and whose access token is nowhere a script could read.
    operator = await account("operator")
    await expect(page.get_by_test_id("sign-in")).to_be_visible()
    await page.screenshot(path=screenshot_path("sign-in"))
    await sign_in(page, operator.username, "not the password")
    await expect(page.locator('[data-error-for="password"]')).to_contain_text(
        "wrong username or password"
    )
    assert await refresh_cookie(page) is None
    await sign_in(page, operator.username, operator.password)
    await expect(page.get_by_test_id("recordings-view")).to_be_visible()
    await expect(page.get_by_test_id("who")).to_have_text(f"{operator.username} (operator)")
    cookie = await refresh_cookie(page)
    assert cookie is not None
    assert cookie["value"].startswith("rhr_")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        True, "Strict", "/api/auth/session"
    )  # fmt: skip
    assert cookie["secure"] is False  # plain http on loopback; Secure over https
    await assert_no_token_in_web_storage(page)
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

    # A reload loses the in-memory access token; the cookie brings the session back (rotated).
    await page.reload()
    await expect(page.get_by_test_id("recordings-view")).to_be_visible()
    await expect(page.get_by_test_id("sign-in")).to_have_count(0)
    await expect(state).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    rotated = await refresh_cookie(page)
    assert rotated is not None
    assert rotated["value"] != cookie["value"]
    assert rotated["httpOnly"] is True
    await assert_no_token_in_web_storage(page)

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

    # Sign out: revoked on the server, the cookie gone; a reload shows the sign-in form, and the
    # cookie the browser held before is refused by the server.
    held = await refresh_cookie(page)
    assert held is not None
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("sign-in")).to_be_visible()
    assert await refresh_cookie(page) is None
    await page.reload()
    await expect(page.get_by_test_id("sign-in")).to_be_visible()
    await expect(page.get_by_test_id("recordings-view")).to_have_count(0)
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as client:
        r = await client.post(
            "/api/auth/session/refresh", json={}, headers={"cookie": f"{COOKIE}={held['value']}"}
        )
    assert r.status_code == 401, r.text
    await assert_no_token_in_web_storage(page)
    assert page.errors == []


ACCESS_TTL_S = 30  # the shortest the setting allows: the page refreshes ~22 s after sign-in
SHORT = {
    "REELHOUSE_ACCESS_TOKEN_TTL_S": str(ACCESS_TTL_S),
    "REELHOUSE_RATE_LIMIT_READ": "60/minute",  # the poll must space itself to stay under it
}


@pytest.mark.parametrize("dashboard_env", [SHORT], ids=["ttl30-60reads"])
async def test_a_viewer_sees_no_button_it_may_not_use_and_stays_signed_in(
    stack, dashboard, account, page
):
    """Jobs that an operator could stop and edit; the viewer sees them without those buttons.
    The page refreshes its access token on a 401 (once) and before it expires, and its poll
    stays within the user's read limit."""
    limited: list[str] = []
    page.on("response", lambda r: r.status == 429 and limited.append(r.url))
    recording = await stack.ok("create", recording_payload(0, active=True))  # no recorder: starting
    r = await stack.client.post("/api/restream/create", json=restream_payload(0), headers=HEADERS)
    assert r.status_code == 200, r.text
    viewer = await account("viewer")
    await page.goto("/")
    await sign_in(page, viewer.username, viewer.password)
    await expect(page.get_by_test_id("who")).to_have_text(f"{viewer.username} (viewer)")
    row = page.locator(f'[data-testid="recording-row"][data-id="{recording["id"]}"]')
    await expect(row).to_be_visible()
    await expect(row.locator("[data-state]")).to_have_attribute("data-state", "starting")
    await expect(row.get_by_test_id("files")).to_be_visible()  # reading is allowed
    for testid in ("stop", "start", "edit", "remove"):
        await expect(row.get_by_test_id(testid)).to_have_count(0)
    await expect(page.get_by_test_id("new-recording")).to_have_count(0)
    await row.get_by_test_id("files").click()
    await expect(
        page.get_by_test_id("files-table").or_(page.get_by_text("No files yet."))
    ).to_be_visible()
    await page.screenshot(path=screenshot_path("viewer"))

    await page.get_by_test_id("nav-restreams").click()
    restream_row = page.get_by_test_id("restream-row")
    await expect(restream_row).to_have_count(1)
    await expect(page.get_by_test_id("new-restream")).to_have_count(0)
    await expect(restream_row.get_by_role("button")).to_have_count(0)

    await page.get_by_test_id("nav-streams").click()
    await expect(page.get_by_test_id("streams-view")).to_be_visible()
    await expect(page.get_by_test_id("inspector")).to_have_count(0)

    # A 401 (what an expired access token gets): the page refreshes once, sends the call again
    # and stays signed in.
    await page.get_by_test_id("nav-recordings").click()
    first = await refresh_cookie(page)
    refused: list[str] = []

    async def refuse_once(route: Any) -> None:
        if refused:
            await route.continue_()
            return
        refused.append(route.request.url)
        error = {"code": "UNAUTHORIZED", "message": "the access token has expired"}
        await route.fulfill(status=401, json={"success": False, "error": error})

    await page.route("**/api/recording/getAll", refuse_once)
    tick = int(await page.evaluate("document.body.dataset.lastPoll"))
    await page.wait_for_function(f"Number(document.body.dataset.lastPoll) >= {tick + 2}")
    assert len(refused) == 1
    after_401 = await refresh_cookie(page)
    assert after_401 is not None
    assert first is not None
    assert after_401["value"] != first["value"]  # refreshed through the cookie
    await expect(page.get_by_test_id("who")).to_be_visible()
    await page.unroute("**/api/recording/getAll")

    # Before expiry the page refreshes by itself (a 30 s token: after about 22 s).
    async def rotated() -> bool:
        now = await refresh_cookie(page)
        return now is not None and now["value"] != after_401["value"]

    await eventually(rotated, timeout=ACCESS_TTL_S, what="a refresh before expiry")
    tick = int(await page.evaluate("document.body.dataset.lastPoll"))
    await page.wait_for_function(f"Number(document.body.dataset.lastPoll) >= {tick + 1}")
    await expect(page.get_by_test_id("sign-in")).to_have_count(0)
    await assert_no_token_in_web_storage(page)
    assert limited == []
    assert page.errors == []
