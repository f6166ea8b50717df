"""What the job modules (recordings, restreams) share: one :class:`JobKind` per module.

A job document links its ``input`` (and, for restreams, ``output``) documents by id lists; the API
presents them populated, in list order. Desired-state changes are followed by a hint to the
module's workers (docs/ARCHITECTURE.md §2); the API never writes ``runtime``, it only presents it.

Activating a job that writes to the storage (every recording; a restream with an HLS output) is
refused with 507 ``INSUFFICIENT_STORAGE`` while the storage disk is past its critical watermark
(docs/DECISIONS.md "Disk watermarks"): after validation, before anything is stored.

A job with a ``schedule`` also gets its precomputed window (``scheduled``,
``schedule_next_start``, ``schedule_next_stop``: :func:`reelhouse.common.schedule.window_fields`)
on create, update and start; responses show the next start and stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from bson import ObjectId
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.api.state import AppState
from reelhouse.common.contracts.base import format_timestamp, utcnow
from reelhouse.common.contracts.listing import ListQuery
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.contracts.types import INGEST_INPUT_TYPES
from reelhouse.common.errors import InsufficientStorage, NotFound, ValidationFailed
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections, find_each
from reelhouse.common.netpolicy import validate_url
from reelhouse.common.runtime import load_runtime
from reelhouse.common.schedule import window_fields
from reelhouse.common.subjects import Module, Service, Verb

log = get_logger("reelhouse.api.jobs")

M = TypeVar("M", bound=BaseModel)

_LINKED_HIDDEN = {"_id", "tenant", "entity_id", "created", "modified"}


@dataclass(frozen=True)
class JobKind:
    """One job module as its routes see it."""

    module: Module
    """``recording`` / ``restream``: stats, events and the hint's ``module``."""
    service: Service
    """The workers that own these jobs and hear the hints."""
    collection: str
    fields: tuple[str, ...]
    """Job fields shown in responses, in order (besides ids, timestamps, runtime)."""
    links: dict[str, str]
    """Job field holding a list of ids → the collection of those documents."""
    writes_files: Callable[[list[str]], bool]
    """Whether an active job with outputs of these types writes to the storage (activating one is
    refused while the disk is critical): every recording; a restream only with an HLS output."""


def _writes_files(kind: JobKind, output_types: list[str]) -> bool:
    return kind.writes_files(output_types)


async def check_disk(state: AppState, kind: JobKind, job_id: str | None = None) -> None:
    """Raise 507 ``INSUFFICIENT_STORAGE`` if the storage disk is past its critical level."""
    disk = await asyncio.to_thread(state.settings.disk_state)
    if disk.level != "critical":
        return
    log.warning(
        f"{kind.module}_refused_disk_critical",
        job_id=job_id,
        used_pct=round(disk.used_pct, 1),
        critical_pct=disk.critical_pct,
    )
    raise InsufficientStorage(
        f"cannot activate the {kind.module}: {disk.describe()}. Free space under the storage "
        "root (or raise REELHOUSE_DISK_CRITICAL_PCT) and try again."
    )


async def _stored_output_types(db: AsyncDatabase, kind: JobKind, job: dict[str, Any]) -> list[str]:
    collection = kind.links.get("output")
    ids = job.get("output") or []
    if collection is None or not ids:
        return []
    found = db[collection].find({"entity_id": str(job["_id"])}, {"output_type": 1})
    return [str(doc.get("output_type", "")) async for doc in found if doc["_id"] in ids]


def _linked_output_types(linked: dict[str, list[BaseModel]]) -> list[str]:
    return [str(getattr(m, "output_type", "")) for m in linked.get("output", [])]


def present_linked(doc: dict[str, Any]) -> dict[str, Any]:
    """A linked input/output document as responses show it (``_id`` and ``id``)."""
    out = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    out.update({k: v for k, v in doc.items() if k not in _LINKED_HIDDEN})
    return out


def present_runtime(runtime: dict[str, Any] | None) -> dict[str, Any] | None:
    """The worker's runtime block, timestamps formatted; ``None`` when no worker holds the job."""
    if not runtime:
        return None
    return {
        key: format_timestamp(value) if isinstance(value, datetime) else value
        for key, value in runtime.items()
    }


def live_runtime(live: Any, module: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """The runtime block as the live plane says it now: ``None`` unless an owner key names a
    node; else the owner's document block (state, pid, restarts, last_error, ...), with ``node``
    from the owner key and ``state`` and ``last_progress`` from the job's last progress (current to
    the second, not frozen at the last state change)."""
    job_id = str(job["_id"])
    owner = live.owners.get((module, job_id))
    if owner is None:
        return None
    runtime = dict(job.get("runtime") or {})
    if runtime.get("node") != owner.node:  # the document lags a take-over by a moment
        runtime = {"state": owner.value.get("state", "starting")}
    runtime["node"] = owner.node
    progress = live.owner_progress(module, job_id)  # not a dead owner's
    if progress is not None:
        value = progress[1]
        if value.get("state"):
            runtime["state"] = value["state"]
        for key in ("restarts", "pid"):  # as fresh as the state they go with
            if value.get(key) is not None:
                runtime[key] = value[key]
        if isinstance(value.get("processData"), dict):
            runtime["last_progress"] = value["processData"]
        runtime["progress_at"] = value.get("timestamp")
    return runtime


def present_job(
    kind: JobKind,
    job: dict[str, Any],
    linked: dict[ObjectId, dict[str, Any]],
    live: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """A job object as the seed shows it, linked documents populated, plus ``extra`` fields;
    ``runtime`` from the live plane when ``live`` is given (every API response but tests')."""
    out: dict[str, Any] = {"_id": str(job["_id"]), "id": str(job["_id"])}
    for key in kind.fields:
        if key in kind.links:
            out[key] = [present_linked(linked[i]) for i in job.get(key, []) if i in linked]
        elif key in job:
            value = job[key]
            out[key] = format_timestamp(value) if isinstance(value, datetime) else value
    out.update(extra)
    runtime = job.get("runtime") if live is None else live_runtime(live, kind.module, job)
    out["runtime"] = present_runtime(runtime)
    out["created"] = format_timestamp(job["created"])
    out["modified"] = format_timestamp(job["modified"])
    out["success"] = True
    return out


async def fetch_linked(
    db: AsyncDatabase, kind: JobKind, jobs: list[dict[str, Any]]
) -> dict[ObjectId, dict[str, Any]]:
    """Every document the jobs link to, by id (one query per linked collection)."""
    found: dict[ObjectId, dict[str, Any]] = {}
    job_ids = [str(job["_id"]) for job in jobs]
    for field, collection in kind.links.items():
        ids = {i for job in jobs for i in job.get(field, [])}
        if ids:  # by the owning job (top-level equality: mongo.find_each), not `_id $in`
            for doc in await find_each(db[collection], "entity_id", job_ids):
                if doc["_id"] in ids:
                    found[doc["_id"]] = doc
    return found


async def load(db: AsyncDatabase, kind: JobKind, tenant: str, job_id: str) -> dict[str, Any]:
    """The tenant's job document, or 404."""
    job = await db[kind.collection].find_one({"_id": ObjectId(job_id), "tenant": tenant})
    if job is None:
        raise NotFound(f"{kind.module} {job_id} not found", field="id")
    return job


async def hint(state: AppState, kind: JobKind, verb: Verb, job_id: str) -> None:
    """Tell the workers at once; if NATS is away they reconcile on their timer anyway."""
    try:
        command = JobCommand(module=kind.module, verb=verb, job_id=job_id)
        await state.bus.publish(state.bus.subjects.command(kind.service, verb), command)
    except Exception as exc:
        log.warning("hint_not_sent", job_id=job_id, verb=verb, error=str(exc))


def list_query(tenant: str, body: ListQuery) -> dict[str, Any]:
    """The MongoDB filter of a getAll/getCount body (its fields were checked by the model)."""
    query: dict[str, Any] = {"tenant": tenant}
    for key, value in body.filter.items():
        if key in ("id", "_id"):
            query["_id"] = ObjectId(value) if ObjectId.is_valid(str(value)) else None
        else:
            query[key] = value
    return query


async def count_jobs(db: AsyncDatabase, kind: JobKind, tenant: str, body: ListQuery) -> int:
    return await db[kind.collection].count_documents(list_query(tenant, body))


async def find_jobs(
    db: AsyncDatabase, kind: JobKind, tenant: str, body: ListQuery
) -> list[dict[str, Any]]:
    """Job documents of a getAll body: filtered, sorted (default ``{created: 1}``), paged."""
    sort = [("_id" if k == "id" else k, v) for k, v in body.sort.items()] or [("created", 1)]
    cursor = db[kind.collection].find(list_query(tenant, body)).sort(sort).skip(body.skip)
    if body.limit:
        cursor = cursor.limit(body.limit)
    return await cursor.to_list(None)


def _linked_doc(model: BaseModel, tenant: str, job_id: ObjectId) -> dict[str, Any]:
    return {**model.model_dump(mode="json"), "tenant": tenant, "entity_id": str(job_id)}


async def check_urls(
    state: AppState, config: dict[str, Any], linked: dict[str, list[BaseModel]]
) -> None:
    """The address policy over every URL of a job the engine will fetch or call for the user:
    the input, an IMAGE overlay's picture and each destination's URL (a 400 naming the field,
    ``reason: forbidden_address``). URLs the engine builds (an SRT listener) are not checked."""
    policy = state.settings.net_policy()
    for inp in linked.get("input", []):
        if getattr(inp, "input_type", None) in INGEST_INPUT_TYPES:
            continue  # the engine builds the reader URL of its own ingest server
        url = getattr(inp, "input_stream_url", "")
        await validate_url(policy, url, role="input", field="input.input_stream_url")
    overlay = config.get("overlay") or {}
    if overlay.get("type") == "IMAGE" and overlay.get("image_url"):
        await validate_url(policy, overlay["image_url"], role="input", field="overlay.image_url")
    for index, out in enumerate(linked.get("output", [])):
        url = getattr(out, "output_stream_url", "")
        if url and not getattr(out, "listen_port", None):
            field = f"output.{index}.output_stream_url"
            await validate_url(policy, url, role="output", field=field)


INGEST_SERVER_COLLECTIONS = {
    "MODULE_SRT_SERVERS": Collections.SRT_SERVERS,
    "MODULE_RTMP_SERVERS": Collections.RTMP_SERVERS,
}


async def check_ingest_inputs(
    db: AsyncDatabase, tenant: str, linked: dict[str, list[BaseModel]]
) -> None:
    """An ingest input names a server of its type and a publisher stream row on that server
    (a 400 naming ``input.input_module_id`` or ``input.input_stream_id`` otherwise)."""
    for inp in linked.get("input", []):
        input_type = getattr(inp, "input_type", None)
        module = INGEST_INPUT_TYPES.get(str(input_type))
        if module is None:
            continue
        collection = INGEST_SERVER_COLLECTIONS[module]
        server_id, stream_id = ObjectId(inp.input_module_id), ObjectId(inp.input_stream_id)
        if await db[collection].count_documents({"_id": server_id, "tenant": tenant}) == 0:
            raise ValidationFailed(
                f"no {module.split('_')[1]} server {server_id} (as {input_type} needs)",
                field="input.input_module_id",
            )
        row = await db[Collections.STREAMS].find_one({"_id": stream_id, "tenant": tenant})
        if row is None or row.get("module_name") != module:
            raise ValidationFailed(
                f"no stream row {stream_id} of {module}", field="input.input_stream_id"
            )
        if str(row.get("entity_id")) != str(server_id):
            raise ValidationFailed(
                f"stream row {stream_id} is on another server, not {server_id}",
                field="input.input_stream_id",
            )
        if row.get("role_name") != "publisher":
            raise ValidationFailed(
                f"stream row {stream_id} is a {row.get('role_name')} row; a job reads what a "
                "publisher row pushes",
                field="input.input_stream_id",
            )


async def create_job(
    state: AppState,
    kind: JobKind,
    tenant: str,
    config: dict[str, Any],
    linked: dict[str, list[BaseModel]],
) -> str:
    """Store a new job (``generation`` 0) and its linked documents; hint start when active.

    The linked documents go first and are removed again if the job cannot be stored, so a
    failed create leaves nothing behind.
    """
    await check_urls(state, config, linked)
    await check_ingest_inputs(state.db, tenant, linked)
    if config.get("active") and _writes_files(kind, _linked_output_types(linked)):
        await check_disk(state, kind)
    db, now, job_id = state.db, utcnow(), ObjectId()
    docs = {
        field: [
            {"_id": ObjectId(), **_linked_doc(m, tenant, job_id), "created": now, "modified": now}
            for m in models
        ]
        for field, models in linked.items()
    }
    job = {
        "_id": job_id,
        "tenant": tenant,
        **config,
        **{field: [d["_id"] for d in field_docs] for field, field_docs in docs.items()},
        **window_fields(config.get("schedule"), now),
        "generation": 0,
        "created": now,
        "modified": now,
    }
    done: list[tuple[str, list[ObjectId]]] = []
    try:
        for field, field_docs in docs.items():
            await db[kind.links[field]].insert_many(field_docs)
            done.append((kind.links[field], [d["_id"] for d in field_docs]))
        await db[kind.collection].insert_one(job)
    except BaseException:
        for collection, ids in done:
            await db[collection].delete_many({"_id": {"$in": ids}})
        raise
    log.info(f"{kind.module}_created", job_id=str(job_id), active=config.get("active"))
    if config.get("active"):
        await hint(state, kind, "start", str(job_id))
    return str(job_id)


async def with_defaults(db: AsyncDatabase, module: str, body: M) -> M:
    """``body`` with the runtime ``job_defaults`` of ``module`` (``/api/settings/update``) for
    every top-level field the request did not give; validated again (400 naming the field)."""
    values, _, _ = await load_runtime(db)
    defaults = values.job_defaults.get(module)  # type: ignore[call-overload]
    if not defaults:
        return body
    given = body.model_dump(mode="json", exclude_unset=True)
    try:
        return type(body).model_validate({**defaults, **given})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _sync_linked(
    db: AsyncDatabase,
    collection: str,
    old_ids: list[ObjectId],
    docs: list[dict[str, Any]],
    now: datetime,
) -> tuple[list[ObjectId], list[ObjectId]]:
    """Make the linked documents read ``docs`` in order: update in place by position, insert
    the extra ones. Returns the new id list and the ids left over."""
    ids = []
    for position, doc in enumerate(docs):
        if position < len(old_ids):
            await db[collection].update_one(
                {"_id": old_ids[position]}, {"$set": {**doc, "modified": now}}
            )
            ids.append(old_ids[position])
        else:
            new_id = ObjectId()
            await db[collection].insert_one({"_id": new_id, **doc, "created": now, "modified": now})
            ids.append(new_id)
    return ids, old_ids[len(docs) :]


async def update_job(
    state: AppState,
    kind: JobKind,
    tenant: str,
    job_id: str,
    config: dict[str, Any],
    linked: dict[str, list[BaseModel]],
) -> None:
    """Replace a job's config and linked documents; a new ``generation`` makes the owner
    restart with it (hint ``reload``), or stop when the update leaves it inactive.

    Linked documents keep their ids position by position; the job's id lists follow the new
    order. Documents no longer named are deleted only after the job stops naming them.
    """
    db, now = state.db, utcnow()
    job = await load(db, kind, tenant, job_id)
    await check_urls(state, config, linked)
    await check_ingest_inputs(db, tenant, linked)
    if config.get("active") and _writes_files(kind, _linked_output_types(linked)):
        await check_disk(state, kind, job_id)
    ids: dict[str, list[ObjectId]] = {}
    left_over: list[tuple[str, list[ObjectId]]] = []
    for field, models in linked.items():
        docs = [_linked_doc(m, tenant, job["_id"]) for m in models]
        collection = kind.links[field]
        ids[field], extra = await _sync_linked(db, collection, job.get(field, []), docs, now)
        left_over.append((collection, extra))
    config = {k: v for k, v in config.items() if k != "id"}
    await db[kind.collection].update_one(
        {"_id": job["_id"], "tenant": tenant},
        {
            "$set": {
                **config,
                **ids,
                **window_fields(config.get("schedule"), now),
                "modified": now,
            },
            "$inc": {"generation": 1},
        },
    )
    for collection, extra in left_over:
        for linked_id in extra:  # by _id, one at a time: FerretDB scans for `$in`
            await db[collection].delete_one({"_id": linked_id})
    active = bool(config.get("active"))
    log.info(f"{kind.module}_updated", job_id=job_id, active=active)
    await hint(state, kind, "reload" if active else "stop", job_id)
    if not active:
        state.live_stats.forget(kind.module, job_id)


async def set_active(
    state: AppState, kind: JobKind, tenant: str, job_id: str, *, active: bool
) -> None:
    """start (``active``, new generation, start hint) or stop (inactive, stop hint)."""
    job = await load(state.db, kind, tenant, job_id)
    if active and _writes_files(kind, await _stored_output_types(state.db, kind, job)):
        await check_disk(state, kind, job_id)
    # start and stop both end a pause: start begins a new session, stop ends the current one.
    now = utcnow()
    change: dict[str, Any] = {"$set": {"active": active, "paused": False, "modified": now}}
    if active:
        change["$inc"] = {"generation": 1}
        if job.get("schedule"):  # the window as of now (it may have moved on while stopped)
            change["$set"].update(window_fields(job["schedule"], now))
    await state.db[kind.collection].update_one({"_id": ObjectId(job_id), "tenant": tenant}, change)
    log.info(f"{kind.module}_{'start' if active else 'stop'}_requested", job_id=job_id)
    await hint(state, kind, "start" if active else "stop", job_id)
    if not active:
        state.live_stats.forget(kind.module, job_id)


async def wait_released(live: Any, kind: JobKind, job_id: ObjectId, timeout_s: float) -> bool:
    """Wait until no live worker owns the job (no owner key, or its node is dead)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            owner = await live.owner(kind.module, str(job_id))
        except Exception:
            owner = live.owners.get((kind.module, str(job_id)))
        if owner is None or not live.alive(owner.node, owner.value.get("service")):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


async def stop_and_wait(state: AppState, kind: JobKind, job_id: str) -> None:
    """Before a remove: mark inactive, hint stop, wait (``stop_wait_s``) for the owner to let go."""
    oid = ObjectId(job_id)
    await state.db[kind.collection].update_one(
        {"_id": oid}, {"$set": {"active": False, "modified": utcnow()}}
    )
    await hint(state, kind, "stop", job_id)
    if not await wait_released(state.live, kind, oid, state.settings.stop_wait_s):
        log.warning(f"{kind.module}_remove_worker_still_holds", job_id=job_id)


async def delete_job(db: AsyncDatabase, kind: JobKind, tenant: str, job: dict[str, Any]) -> None:
    """Delete a presented job's linked documents, then the job."""
    for field, collection in kind.links.items():
        for linked in job.get(field, []):  # by _id, one at a time: FerretDB scans for `$in`
            await db[collection].delete_one({"_id": ObjectId(linked["_id"])})
    await db[kind.collection].delete_one({"_id": ObjectId(job["_id"]), "tenant": tenant})


def stat_rows(state: AppState, kind: JobKind, tenant: str) -> JSONResponse:
    """getStat: the tenant's live stats of this module (never touches MongoDB), rendered as
    they are: the rows are built once per progress revision and not validated again."""
    return JSONResponse(state.live_stats.rows(kind.module, tenant=tenant))
