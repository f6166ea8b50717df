"""MongoDB access in one place: the client, collection names and indexes.

Only single-document atomic operations are used (ARCHITECTURE §2): no multi-document
transactions, no change streams, no ``$lookup``, so the same code runs on MongoDB and on FerretDB.
Repository functions elsewhere take keyword arguments (``get_job(*, db, tenant, job_id)``).
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.settings import CommonSettings


class Collections:
    """Collection names."""

    NODES = "nodes"
    RECORDINGS = "recordings"
    RESTREAMS = "restreams"
    INPUTS = "inputs"
    OUTPUTS = "outputs"
    FILES = "files"
    STREAMS = "streams"


def connect_mongo(settings: CommonSettings, *, app_name: str) -> AsyncMongoClient:
    """A client for ``settings.mongodb_url``; connects lazily, fails fast when the DB is away."""
    return AsyncMongoClient(
        settings.mongodb_url,
        appname=app_name,
        serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
        connectTimeoutMS=settings.mongodb_timeout_ms,
        tz_aware=True,
    )


def get_database(client: AsyncMongoClient, settings: CommonSettings) -> AsyncDatabase:
    """The deployment's database."""
    return client[settings.mongodb_database]


async def ensure_indexes(db: AsyncDatabase) -> None:
    """Create every index the services rely on (idempotent)."""
    await db[Collections.NODES].create_index([("service", ASCENDING), ("last_seen", DESCENDING)])
    for name in (Collections.RECORDINGS, Collections.RESTREAMS):
        await db[name].create_index([("tenant", ASCENDING), ("created", ASCENDING)])
        await db[name].create_index([("active", ASCENDING), ("runtime.lease_until", ASCENDING)])
    await db[Collections.FILES].create_index(
        [("tenant", ASCENDING), ("entity_id", ASCENDING), ("created", ASCENDING)]
    )
    await db[Collections.STREAMS].create_index([("tenant", ASCENDING), ("created", ASCENDING)])


async def server_version(db: AsyncDatabase) -> str:
    """The server's version; raises if the server cannot be reached in time."""
    info = await db.client.server_info()
    return str(info.get("version", "unknown"))
