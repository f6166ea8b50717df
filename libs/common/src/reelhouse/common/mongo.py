"""MongoDB access in one place: the client, collection names and indexes.

Only single-document atomic operations are used (docs/ARCHITECTURE.md §2): no multi-document
transactions, no change streams, no ``$lookup``, so the same code runs on MongoDB and on FerretDB.
Repository functions elsewhere take keyword arguments (``get_job(*, db, tenant, job_id)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
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
    CHANNELS = "channels"
    CHANNEL_RECORDINGS = "channel_recordings"
    """One document per recorded broadcast of a channel (a session of the channel's job)."""
    PLATFORM_AUTH = "platform_auth"
    """A tenant's credentials for one platform, sealed (``reelhouse.common.credentials``)."""
    STORAGE_TARGETS = "storage_targets"
    """S3-compatible buckets recordings are uploaded to (issue 24), credentials sealed."""
    SRT_SERVERS = "srt_servers"
    RTMP_SERVERS = "rtmp_servers"


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
    """Create every index the services rely on (idempotent).

    On the local FerretDB these calls change nothing: ``tools/ferretdb-lite`` creates the
    indexes its pushed-down filters can use (top-level equality only) itself, from its own list
    of each collection's equality fields, which must name every field the hot queries below
    compare by equality (``indexed`` in ``tools/ferretdb-lite/prepare.go``).
    """
    await db[Collections.NODES].create_index([("service", ASCENDING), ("last_seen", DESCENDING)])
    for name in (Collections.RECORDINGS, Collections.RESTREAMS):
        await db[name].create_index([("tenant", ASCENDING), ("created", ASCENDING)])
        await db[name].create_index([("active", ASCENDING), ("runtime.lease_until", ASCENDING)])
    for name in (Collections.INPUTS, Collections.OUTPUTS):  # a page's linked documents
        await db[name].create_index([("entity_id", ASCENDING)])
    await db[Collections.FILES].create_index(
        [("tenant", ASCENDING), ("entity_id", ASCENDING), ("created", ASCENDING)]
    )
    # one job's files (getAll's recordedFiles, the janitor's retention), without the tenant
    await db[Collections.FILES].create_index([("entity_id", ASCENDING), ("created", ASCENDING)])
    # the upload backlog of a storage target (issue 24; /metrics): set only while an upload is
    # pending, running or failed, so its equality query reads the backlog, not the archive
    await db[Collections.FILES].create_index([("upload_backlog", ASCENDING)])
    await db[Collections.STREAMS].create_index([("tenant", ASCENDING), ("created", ASCENDING)])
    await db[Collections.CHANNELS].create_index([("tenant", ASCENDING), ("created", ASCENDING)])
    await db[Collections.STORAGE_TARGETS].create_index(
        [("tenant", ASCENDING), ("created", ASCENDING)]
    )
    await db[Collections.CHANNEL_RECORDINGS].create_index(
        [("tenant", ASCENDING), ("channel_id", ASCENDING), ("started_at", DESCENDING)]
    )


async def find_each(
    collection: AsyncCollection,
    field: str,
    values: Iterable[Any],
    projection: dict[str, Any] | None = None,
    *,
    at_once: int = 8,
) -> list[dict[str, Any]]:
    """Every document whose top-level ``field`` equals one of ``values``: one equality query
    per value, ``at_once`` in flight, instead of one ``$in`` query.

    The local FerretDB pushes only top-level equality down to its backend; an ``$in`` makes it
    read and decode every document of the collection. One equality query per value reads only
    the matching documents, through an index on both servers. Use it for a page's worth of
    values, not thousands.
    """
    wanted = list(dict.fromkeys(values))
    limit = asyncio.Semaphore(at_once)

    async def one(value: Any) -> list[dict[str, Any]]:
        async with limit:
            return await collection.find({field: value}, projection).to_list(None)

    found = await asyncio.gather(*(one(v) for v in wanted))
    return [doc for docs in found for doc in docs]


async def server_version(db: AsyncDatabase) -> str:
    """The server's version; raises if the server cannot be reached in time."""
    info = await db.client.server_info()
    return str(info.get("version", "unknown"))
