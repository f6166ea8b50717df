"""Test infrastructure: real nats-server, a real MongoDB-compatible server, real FFmpeg.

``REELHOUSE_TEST_INFRA=local`` (default) starts nats-server and FerretDB (the ferretdb-lite helper)
once per session on free loopback ports. ``REELHOUSE_TEST_INFRA=containers`` uses testcontainers
(``mongo:7``, ``nats:2.15 -js``) instead, where Docker exists. With ``REELHOUSE_MONGODB_URL`` set,
that MongoDB is used instead of FerretDB. Every test gets its own database name and NATS subject
prefix, so tests never see each other's data or messages.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from support import infra as local

from reelhouse.common.bus import Bus
from reelhouse.common.live import LivePlane
from reelhouse.common.settings import CommonSettings

pytest_plugins = ["support.media_fixtures", "support.s3"]

LOOPBACK = local.LOOPBACK
"""What ``make up`` allows: the networks local test sources and receivers listen on."""


_FOLDER_MARKS = {"unit": "unit", "integration": "integration", "e2e": "integration",
                 "browser": "browser"}  # fmt: skip
"""The marker each folder of ``tests/`` gives its tests."""

MEDIA_FIXTURES = frozenset({"media_source_factory", "media_receiver_factory", "udp_source_factory"})
"""Fixtures that start FFmpeg (live test sources and receivers): a test using one is ``media``."""

MEDIA_MODULES = frozenset({"test_ffmpeg_command_media"})
"""Modules that run FFmpeg themselves, without the fixtures."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from where a test lives and what it uses (registered in pyproject.toml)."""
    for item in items:
        parts = item.path.relative_to(Path(__file__).parent).parts
        if parts[0] in _FOLDER_MARKS:
            item.add_marker(_FOLDER_MARKS[parts[0]])
        if MEDIA_MODULES.intersection([item.path.stem]) or MEDIA_FIXTURES.intersection(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker("media")


@dataclass(frozen=True)
class Infra:
    mode: str
    nats_url: str
    mongodb_url: str


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    mode = os.environ.get("REELHOUSE_TEST_INFRA", "local")
    if mode == "containers":
        from testcontainers.community.mongodb import MongoDbContainer
        from testcontainers.community.nats import NatsContainer

        with MongoDbContainer("mongo:7") as mongo, NatsContainer("nats:2.15", jetstream=True) as n:
            yield Infra(mode, n.nats_uri(), mongo.get_connection_url())
        return
    if mode != "local":
        raise pytest.UsageError(f"REELHOUSE_TEST_INFRA must be local or containers, not {mode!r}")
    base = tmp_path_factory.mktemp("infra")
    nats = local.nats_server(base / "nats")
    nats.start()
    ferret = None
    mongodb_url = os.environ.get("REELHOUSE_MONGODB_URL")
    if not mongodb_url:
        ferret = local.ferretdb(base / "ferretdb")
        ferret.start()
        mongodb_url = f"mongodb://127.0.0.1:{ferret.port}/"
    try:
        yield Infra(mode, f"nats://127.0.0.1:{nats.port}", mongodb_url)
    finally:
        nats.stop()
        if ferret is not None:
            ferret.stop()


@pytest.fixture
def test_id() -> str:
    """Short unique id of this test: its database is ``t_<id>``, its subject prefix ``t<id>``."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def settings_env(infra: Infra, test_id: str, tmp_path: Path) -> dict[str, str]:
    """``REELHOUSE_*`` variables that point a service at this test's infrastructure."""
    return local.settings_env(infra.nats_url, infra.mongodb_url, tmp_path, test_id)


@pytest.fixture
def service_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The whole environment for a service subprocess (this one's plus ``settings_env``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOUSE_")}
    return {**env, **settings_env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
async def db(infra: Infra, settings_env: dict[str, str]) -> AsyncIterator[AsyncDatabase]:
    """This test's own database on the real server; dropped afterwards."""
    client: AsyncMongoClient = AsyncMongoClient(
        infra.mongodb_url, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    name = settings_env["REELHOUSE_MONGODB_DATABASE"]
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture
async def plane(settings_env: dict[str, str]) -> AsyncIterator[Callable[..., Awaitable[LivePlane]]]:
    """Live planes (docs/ARCHITECTURE.md §2) of named recorder nodes on this test's NATS, each on
    its own connection, heartbeating every 0.2 s with a 1 s TTL; stopped at the end."""
    settings = CommonSettings(nats_url=settings_env["REELHOUSE_NATS_URL"],
                              subject_prefix=settings_env["REELHOUSE_SUBJECT_PREFIX"])  # fmt: skip
    made: list[tuple[Bus, asyncio.Event, asyncio.Task[None]]] = []

    async def make(node: str) -> LivePlane:
        bus = Bus(settings, name=node)
        await bus.start()
        assert await bus.wait_connected(timeout=5)
        subjects = bus.subjects
        live = LivePlane(bus, service="recorder", node_id=node, heartbeat_s=0.2, ttl_s=1,
                         watch=(subjects.live_nodes(), subjects.live_owners()))  # fmt: skip
        stop = asyncio.Event()
        made.append((bus, stop, asyncio.create_task(live.run(stop))))
        await asyncio.wait_for(live.ready.wait(), 10)
        return live

    yield make
    for bus, stop, task in made:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
