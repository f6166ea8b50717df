"""The dashboard's Storage page and the files view's upload state (issue 24) in headless
Chromium, on the real stack with a real S3-compatible server (versitygw) and the janitor's
uploader.

An operator creates a storage target through the page's form (its keys are write-only: the
form is empty again when editing, and no answer carries them), presses Test and sees ``ok``;
a wrong bucket shows ``no_bucket``. A recording naming the target gets a closed file, the
janitor uploads it, and the recording's files view shows ``uploaded``. A viewer sees the targets
and the upload state, and no button that writes or tests. The page's screenshot lands in
docs/screenshots/storage.png.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from bson import ObjectId
from playwright.async_api import Page, Response, expect
from support.s3 import ACCESS, SECRET, S3Server
from support.seeds import recording_payload
from test_dashboard import WAIT_MS, screenshot_path, sign_in

from reelhouse.common.mongo import Collections

pytestmark = pytest.mark.slow


async def fill_target(page: Page, s3: S3Server, name: str, bucket: str) -> None:
    form = page.get_by_test_id("target-form")
    await form.get_by_label("Name", exact=True).fill(name)
    await form.get_by_label("Provider", exact=True).select_option("other")
    await form.get_by_label("Endpoint URL", exact=True).fill(s3.url)
    await form.get_by_label("Bucket", exact=True).fill(bucket)
    await form.get_by_label("Path-style addressing", exact=True).check()
    await form.get_by_label("Access key id", exact=True).fill(ACCESS)
    await form.get_by_label("Secret access key", exact=True).fill(SECRET)
    await form.get_by_test_id("save").click()
    await expect(form).to_be_hidden()


async def test_storage_page_creates_and_tests_a_target_and_files_show_their_upload(
    stack, db, dashboard, account, page, s3_server
):
    s3 = s3_server
    s3.make_bucket("recordings")
    answers: list[Response] = []  # every storage-targets answer the page got
    page.on("response", lambda r: "/api/storage-targets/" in r.url and answers.append(r))
    operator = await account("operator")
    await page.goto("/#/storage")
    await sign_in(page, operator.username, operator.password)
    view = page.get_by_test_id("storage-view")
    await expect(view.get_by_test_id("targets-table")).to_have_text("No storage targets yet.",
                                                                    timeout=WAIT_MS)  # fmt: skip

    # A target made through the form, tested: ok.
    await view.get_by_test_id("new-target").click()
    await fill_target(page, s3, "local versitygw", "recordings")
    row = view.get_by_test_id("target-row").filter(has_text="local versitygw")
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await expect(row).to_contain_text("set")  # keys set, not shown
    await row.get_by_test_id("test-target").click()
    result = row.get_by_test_id("test-result").locator(".badge")
    await expect(result).to_have_attribute("data-state", "ok", timeout=WAIT_MS)
    # Write-only keys: an edit form starts with both key fields empty.
    await row.get_by_test_id("edit-target").click()
    form = page.get_by_test_id("target-form")
    await expect(form.get_by_label("Access key id", exact=True)).to_have_value("")
    await expect(form.get_by_label("Secret access key", exact=True)).to_have_value("")
    await form.get_by_role("button", name="Cancel").click()
    # A second target on a bucket that does not exist: no_bucket.
    await view.get_by_test_id("new-target").click()
    await fill_target(page, s3, "missing bucket", "no-such-bucket")
    bad = view.get_by_test_id("target-row").filter(has_text="missing bucket")
    await bad.get_by_test_id("test-target").click()
    await expect(bad.get_by_test_id("test-result").locator(".badge")).to_have_attribute(
        "data-state", "failed", timeout=WAIT_MS
    )
    await expect(bad.get_by_test_id("test-result")).to_contain_text("no_bucket")
    assert {a.url.rsplit("/", 1)[1] for a in answers} >= {"create", "getAll", "test"}
    for answer in answers:
        text = await answer.text()
        assert SECRET not in text, answer.url
        assert ACCESS not in text, answer.url
    stored = await db[Collections.STORAGE_TARGETS].find_one({"storage_name": "local versitygw"})
    assert SECRET not in str(stored)
    assert SECRET not in await page.content()

    # A recording naming the target, with one closed file: the janitor uploads it.
    body = recording_payload(0, active=False, output_format="mpegts",
                             storage_id=str(stored["_id"]), keep_local=True)  # fmt: skip
    job = await stack.ok("create", body)
    path = stack.storage_root / job["id"] / "cam-2026-03-24_12-00-00.ts"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(256 * 1024))
    now = datetime.now(UTC)
    await db[Collections.FILES].insert_one(
        {"_id": ObjectId(), "tenant": "default", "entity_id": job["id"], "file_name": path.name,
         "file_path": str(path), "status": "ready", "size_bytes": path.stat().st_size,
         "output_format": "mpegts", "created": now, "modified": now}
    )  # fmt: skip
    await stack.start_janitor(REELHOUSE_UPLOAD_REPAIR_S="3600", REELHOUSE_INTERVAL_S="3600")
    await page.get_by_test_id("nav-recordings").click()
    job_row = page.locator(f"[data-testid=recording-row][data-id='{job['id']}']")
    await job_row.get_by_test_id("files").click()
    state = page.get_by_test_id("file-row").first.get_by_test_id("upload-state")
    await expect(state).to_have_attribute("data-state", "uploaded", timeout=WAIT_MS)
    assert s3.keys("recordings") == {f"{job['id']}/{path.name}": 256 * 1024}

    await page.get_by_test_id("nav-storage").click()
    await expect(row.get_by_test_id("test-result")).to_be_visible()
    await page.screenshot(path=str(screenshot_path("storage")), full_page=True)
    assert page.errors == []

    # A viewer: the targets and the upload state, no button that writes or tests.
    viewer = await account("viewer")
    await page.get_by_test_id("sign-out").click()
    await sign_in(page, viewer.username, viewer.password)
    await page.goto("/#/storage")
    await expect(view.get_by_test_id("target-row")).to_have_count(2, timeout=WAIT_MS)
    for testid in ("new-target", "test-target", "edit-target", "remove-target"):
        await expect(page.get_by_test_id(testid)).to_have_count(0)
    await page.get_by_test_id("nav-recordings").click()
    await job_row.get_by_test_id("files").click()
    await expect(state).to_have_attribute("data-state", "uploaded", timeout=WAIT_MS)
    await expect(page.get_by_test_id("delete-file")).to_have_count(0)
    assert page.errors == []
