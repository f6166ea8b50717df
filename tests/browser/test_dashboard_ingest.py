"""The dashboard's Ingest page in headless Chromium (issue 21): SRT and RTMP servers and their
stream rows made through the page's forms, real FFmpeg encoders pushing to the URLs the page
shows, and the live panels fed by the events WebSocket's statistics.

Real nats-server, FerretDB, ingest service with the Go data plane (``.cache/bin/reelhouse-ingest``)
and FFmpeg; the API serves the page over HTTP. The test reads the publish and read URLs off the
page (and its copy button), pushes an SRT contribution with one reader, and waits for the panel's
bitrate to move and its readers to show 1; a wrong passphrase, a publisher that goes and comes
back show in the events list, and a refusal while the API is down shows once it is back (the
socket resumes from the last event id). An RTMP contribution shows bytes, bitrate and readers;
servers and rows are edited, stopped and removed through the page, and a viewer sees no button
it may not use. The page's screenshot lands in docs/screenshots/ingest.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect
from support.media import FfmpegProcess, MediaSpec, _ffmpeg_argv, free_port
from support.stack import DATAPLANE, running_stack
from support.wait import eventually
from test_dashboard import WAIT_MS, screenshot_path, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATAPLANE.exists(), reason=f"the data plane is not built ({DATAPLANE})"),
]

SRT_PASS = "server-pass-123"


@pytest.fixture
async def stack(service_env: dict[str, str], tmp_path: Path):
    """This module's stack: one free port in each ingest port range, its own fan-out port."""
    srt, rtmp = free_port("udp"), free_port("tcp")
    env = {
        **service_env,
        "REELHOUSE_INGEST_SRT_PORTS": f"{srt}-{srt}",
        "REELHOUSE_INGEST_RTMP_PORTS": f"{rtmp}-{rtmp}",
        "REELHOUSE_INGEST_FANOUT_PORT": str(free_port("udp")),
        "REELHOUSE_INGEST_PUBLIC_HOST": "127.0.0.1",
    }
    async with running_stack(env, tmp_path) as s:
        yield s


def port_of(env: dict[str, str], proto: str) -> int:
    return int(env[f"REELHOUSE_INGEST_{proto.upper()}_PORTS"].split("-")[0])


def encoder(url: str, fmt: str = "mpegts") -> FfmpegProcess:
    spec = MediaSpec.of("320x180")
    return FfmpegProcess(_ffmpeg_argv(*spec.source_args(), "-f", fmt, url), name="encoder")


def reader(url: str) -> FfmpegProcess:
    return FfmpegProcess(_ffmpeg_argv("-i", url, "-c", "copy", "-f", "null", "-"), name="reader")


async def create_server(page: Page, proto: str, name: str, port: int, passphrase: str = "") -> None:
    await page.get_by_test_id(f"new-{proto}-server").click()
    form = page.get_by_test_id("server-form")
    await form.get_by_label("Name", exact=True).fill(name)
    await form.get_by_label("Port", exact=False).fill(str(port))
    if passphrase:
        await form.get_by_label("Passphrase", exact=True).fill(passphrase)
    await form.get_by_test_id("save").click()


async def add_row(server: Locator, page: Page, name: str, stream_id: str, key: str = "") -> Locator:
    await server.get_by_test_id("add-row").click()
    form = page.get_by_test_id("row-form")
    await form.get_by_label("Name", exact=True).fill(name)
    await form.get_by_label("Stream id", exact=True).fill(stream_id)
    if key:
        await form.get_by_label("Stream key", exact=True).fill(key)
    await form.get_by_test_id("save").click()
    await expect(form).to_be_hidden()
    return server.locator(f'[data-testid="ingest-stream-row"][data-name="{name}"]')


def state_of(server: Locator) -> Locator:
    return server.get_by_test_id("server-status").locator("[data-state]")


async def value(panel: Locator, metric: str) -> str | None:
    return await panel.get_by_test_id(metric).get_attribute("data-value", timeout=2_000)


async def test_ingest_page_shows_a_live_srt_contribution_and_its_publisher_events(
    stack, dashboard, account, page
):
    srt_port, rtmp_port = port_of(stack.env, "srt"), port_of(stack.env, "rtmp")
    # A long hold: the encoder that comes back below is a publisher_back, not a new contribution.
    ingest = await stack.start_ingest(REELHOUSE_INGEST_GAP_HOLD_S="20")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    operator = await account("operator")
    await page.goto("/")
    await sign_in(page, operator.username, operator.password)
    await page.get_by_test_id("nav-ingest").click()
    view = page.get_by_test_id("ingest-view")
    await expect(view.get_by_test_id("live-state")).to_have_attribute("data-state", "live")
    feed = page.locator("aside").get_by_test_id("events-feed")

    # An SRT server through the form: a port outside the deployment's range is refused by the
    # field (the API's message), the right one opens.
    await create_server(page, "srt", "Main stage", srt_port + 1, SRT_PASS)
    form = page.get_by_test_id("server-form")
    await expect(form.locator('[data-error-for="server_port"]')).to_contain_text(
        "outside the SRT server port range"
    )
    await form.get_by_label("Port", exact=False).fill(str(srt_port))
    await form.get_by_test_id("save").click()
    await expect(form).to_be_hidden()
    srt = view.locator('[data-testid="ingest-server"][data-name="Main stage"]')
    await expect(state_of(srt)).to_have_attribute("data-state", "listening", timeout=WAIT_MS)
    await expect(srt.get_by_test_id("server-facts")).to_contain_text(f"UDP port {srt_port}")

    # A publisher row: its publish and read URLs on the page, the copy button copies.
    row = await add_row(srt, page, "Camera 1", "publisher/main-stage/cam")
    publish_url = (
        f"srt://127.0.0.1:{srt_port}?streamid=publisher/main-stage/cam&passphrase={SRT_PASS}"
    )
    await expect(row.get_by_test_id("publish-url")).to_have_text(publish_url)
    read_url = await row.get_by_test_id("read-url").text_content()
    assert read_url is not None
    assert read_url.startswith(f"srt://127.0.0.1:{srt_port}?streamid=receiver/main-stage/cam")
    await row.get_by_test_id("copy-publish").click()
    assert await page.evaluate("navigator.clipboard.readText()") == publish_url
    await expect(row.get_by_test_id("copy-publish")).to_have_text("Copied")

    procs: list[FfmpegProcess] = []
    try:
        # A real SRT encoder on the copied URL and one reader on the read URL.
        procs.append(await encoder(publish_url).start())
        panel = srt.locator('[data-testid="live-panel"][data-name="main-stage/cam"]')
        await expect(panel).to_be_visible(timeout=WAIT_MS)
        await expect(panel).to_contain_text("Camera 1")
        await expect(feed).to_contain_text("publisher up: main-stage/cam", timeout=WAIT_MS)
        procs.append(await reader(read_url).start())
        await expect(panel.get_by_test_id("m-readers")).to_have_attribute(
            "data-value", "1", timeout=WAIT_MS
        )

        # The bitrate moves (several distinct values above zero, one frame a second), and the
        # SRT numbers are there: RTT, loss, retransmits, buffer, the negotiated latency.
        seen: set[str] = set()

        async def moving() -> bool:
            kbits = await value(panel, "m-bitrate")
            if kbits and float(kbits) > 0:
                seen.add(kbits)
            return len(seen) >= 3

        await eventually(moving, timeout=20, what=f"the bitrate to move (saw {seen})", interval=0.3)
        for metric in ("m-rtt", "m-loss", "m-retrans", "m-buffer", "m-latency"):
            number = await value(panel, metric)
            assert number not in (None, ""), metric
            assert float(number) >= 0, (metric, number)
        assert float(await value(panel, "m-latency") or 0) >= 100
        assert "127.0.0.1:" in (await panel.get_by_test_id("m-since").get_attribute("title") or "")
        await expect(panel.locator("svg.sparkline polyline")).to_have_count(2)  # bitrate, RTT
        assert int(await panel.get_attribute("data-samples") or 0) >= 3

        # A wrong passphrase is refused, and says so in the events list.
        wrong = await encoder(publish_url.replace(SRT_PASS, "wrong-pass-1234")).start()
        procs.append(wrong)
        await expect(feed).to_contain_text("bad_passphrase", timeout=WAIT_MS)

        # The encoder goes (the panel holds its readers) and comes back within the hold.
        await procs[0].stop()
        await expect(feed).to_contain_text("publisher lost: main-stage/cam", timeout=WAIT_MS)
        await expect(panel.locator(".live-head [data-state]")).to_have_attribute(
            "data-state", "waiting", timeout=WAIT_MS
        )
        procs[0] = await encoder(publish_url).start()
        await expect(
            feed.get_by_text("publisher back: main-stage/cam").or_(
                feed.get_by_text("publisher replaced: main-stage/cam")
            )
        ).to_have_count(1, timeout=WAIT_MS)
        await expect(panel.locator(".live-head [data-state]")).to_have_attribute(
            "data-state", "running", timeout=WAIT_MS
        )
        await expect(panel.get_by_test_id("m-gaps")).to_be_visible(timeout=WAIT_MS)
        await expect(panel.get_by_test_id("m-readers")).to_have_attribute("data-value", "1")

        # An RTMP server and row through the forms; an FLV encoder on its publish URL shows
        # bytes, bitrate and readers (no SRT transport numbers).
        await create_server(page, "rtmp", "Program", rtmp_port)
        await expect(page.get_by_test_id("server-form")).to_be_hidden()
        rtmp = view.locator('[data-testid="ingest-server"][data-name="Program"]')
        await expect(state_of(rtmp)).to_have_attribute("data-state", "listening", timeout=WAIT_MS)
        program = await add_row(rtmp, page, "Program out", "live/program", key="stream-key-1234")
        rtmp_url = f"rtmp://127.0.0.1:{rtmp_port}/live/program?key=stream-key-1234"
        await expect(program.get_by_test_id("publish-url")).to_have_text(rtmp_url)
        procs.append(await encoder(rtmp_url, "flv").start())
        rtmp_panel = rtmp.locator('[data-testid="live-panel"][data-name="live/program"]')
        await expect(rtmp_panel).to_be_visible(timeout=WAIT_MS)
        await page.wait_for_function(
            """() => Number(document.querySelector(
                  '[data-testid=live-panel][data-name="live/program"] [data-testid=m-bitrate]'
               )?.dataset.value) > 0""",
            timeout=WAIT_MS,
        )
        await expect(rtmp_panel.get_by_test_id("m-bytes")).not_to_have_attribute("data-value", "")
        await expect(rtmp_panel.get_by_test_id("m-readers")).to_have_attribute("data-value", "0")
        await expect(rtmp_panel.get_by_test_id("m-rtt")).to_have_count(0)

        await page.mouse.move(0, 0)
        await page.screenshot(path=screenshot_path("ingest"), full_page=True)

        # The API goes away and comes back: the page's socket reconnects and resumes after the
        # last event it saw, so a refusal while the API was down (the ingest service runs on)
        # still reaches the events list, once.
        live_state = view.get_by_test_id("live-state")
        refusals = feed.locator("li", has_text="bad_passphrase")
        await expect(refusals).to_have_count(1)
        logged = ingest.output().count("ingest_refused")
        await dashboard.api.terminate()
        await expect(live_state).not_to_have_attribute("data-state", "live", timeout=WAIT_MS)
        procs.append(await encoder(publish_url.replace(SRT_PASS, "wrong-pass-5678")).start())
        await eventually(lambda: ingest.output().count("ingest_refused") > logged, timeout=20,
                         what="the second wrong passphrase refused")  # fmt: skip
        await dashboard.api.start()
        await expect(live_state).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(refusals).to_have_count(2, timeout=WAIT_MS)
        await expect(panel.get_by_test_id("m-readers")).to_have_attribute("data-value", "1")

        # Edit, stop, remove: the page follows the API.
        await rtmp.get_by_test_id("server-edit").click()
        edit = page.get_by_test_id("server-form")
        await edit.get_by_label("Name", exact=True).fill("Program feed")
        await edit.get_by_test_id("save").click()
        rtmp = view.locator('[data-testid="ingest-server"][data-name="Program feed"]')
        await expect(rtmp).to_be_visible()
        await srt.get_by_test_id("server-stop").click()
        await expect(state_of(srt)).to_have_attribute("data-state", "stopped")
        # Its statistics stop: the panel goes once they are stale (5 s).
        await expect(panel).to_have_count(0, timeout=WAIT_MS)
        await expect(srt.get_by_test_id("live-panels")).to_contain_text("No live contribution")
        srt_id = await srt.get_attribute("data-id")
        row_id = await row.get_attribute("data-id")
        await row.get_by_test_id("row-remove").click()
        await expect(row).to_have_count(0)
        await srt.get_by_test_id("server-remove").click()
        await expect(srt).to_have_count(0)
        assert (await stack.api("srt-servers/getById", {"id": srt_id})).status_code == 404
        assert (await stack.api("streams/getById", {"id": row_id})).status_code == 404

        # A viewer sees the servers, rows, URLs and live panels, and no button it may not use.
        viewer = await account("viewer")
        await page.get_by_test_id("sign-out").click()
        await sign_in(page, viewer.username, viewer.password)
        await expect(view).to_be_visible()
        await expect(
            rtmp.locator('[data-testid="live-panel"][data-name="live/program"]')
        ).to_be_visible(timeout=WAIT_MS)
        await expect(rtmp.get_by_test_id("publish-url")).to_have_text(rtmp_url)
        operator_only = ["new-srt-server", "new-rtmp-server", "server-stop", "server-edit"]
        operator_only += ["add-row", "server-remove", "row-stop", "row-edit", "row-remove"]
        for testid in operator_only:
            await expect(view.get_by_test_id(testid)).to_have_count(0)
        assert page.errors == []
    finally:
        for proc in procs:
            await proc.stop()
