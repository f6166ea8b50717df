"""Browser fixtures: Debian's Chromium driven by Playwright, and the API as a real HTTP server.

The Stack of ``support.stack`` runs the API in-process behind httpx, which a browser cannot
reach; ``dashboard`` starts ``python -m reelhouse.api`` (uvicorn) on a free loopback port with
the test's own ``REELHOUSE_*`` settings and the stack's token, next to it. ``account`` makes
users through that API with the bootstrap token, for the page's username-and-password sign-in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.media import free_port
from support.services import ServiceProcess
from support.stack import HEADERS, TOKEN, running_stack
from support.wait import eventually

CHROMIUM = Path(os.environ.get("REELHOUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    # This machine's network is closed: without these Chromium keeps dialling out at start.
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


@pytest.fixture(scope="session")
async def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make install` (scripts/bootstrap.sh) installs it")
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="reelhouse-chromium-")  # a fresh profile every run
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--disk-cache-dir={profile}/cache"],
        )
        try:
            yield browser
        finally:
            await browser.close()
            shutil.rmtree(profile, ignore_errors=True)  # no profile left in /tmp per run


@dataclass
class Dashboard:
    url: str
    api: ServiceProcess


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


@pytest.fixture
def dashboard_env() -> dict[str, str]:
    """More settings of the dashboard's API (a test parametrizes it to change them)."""
    return {}


@pytest.fixture
async def dashboard(stack, tmp_path, dashboard_env) -> AsyncIterator[Dashboard]:
    """The API (and so the page) served over HTTP on a free loopback port."""
    port = free_port()
    env = {
        **stack.env,
        **dashboard_env,
        "REELHOUSE_API_HOST": "127.0.0.1",
        "REELHOUSE_API_PORT": str(port),
        "REELHOUSE_BOOTSTRAP_TOKEN": TOKEN,
        "REELHOUSE_NODE_ID": "api-browser",
    }
    api = ServiceProcess("api", env, tmp_path / "api-http.log")
    await api.start()
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"{url}/api/health")).status_code in (200, 503)

    try:
        await eventually(answers, timeout=30, what="the API to listen", interval=0.1)
        yield Dashboard(url=url, api=api)
    finally:
        try:
            await api.terminate(timeout=15)
        finally:
            await api.kill()


@dataclass
class Account:
    username: str
    password: str
    role: str


@pytest.fixture
async def account(dashboard) -> Callable[[str], Awaitable[Account]]:
    """``await account("operator")``: a new user of that role, made with the bootstrap token."""

    async def make(role: str) -> Account:
        made = Account(f"{role}-{uuid.uuid4().hex[:6]}", "a long passphrase", role)
        body = {"username": made.username, "password": made.password, "role": role}
        async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as client:
            r = await client.post("/api/users/create", json=body, headers=HEADERS)
        assert r.status_code == 200, r.text
        return made

    return make


@pytest.fixture
async def page(browser, dashboard):
    context = await browser.new_context(
        base_url=dashboard.url, viewport={"width": 1440, "height": 900}, accept_downloads=True
    )
    page = await context.new_page()
    page.errors = []  # uncaught exceptions in the page: a test fails on any
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        await context.close()
