"""``/api/storage-targets/*``: S3-compatible buckets that recordings are uploaded to (issue 24).

Operators write (create, update, remove, test); viewers read (getAll, getById). Credentials are
write-only: sealed with the deployment's secret key (``REELHOUSE_SECRET_KEY``) and never in an
answer. ``endpoint_url`` follows the engine's URL policy (``REELHOUSE_PROBE_ALLOW_NETWORKS``).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import Operator, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.storage_targets import service
from reelhouse.api.storage_targets.schemas import Removed, StorageTargetOut, StorageTestResult
from reelhouse.common import objectstore
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.storage_targets import (
    StorageTargetIn,
    StorageTargetRef,
    StorageTargetUpdate,
)
from reelhouse.common.errors import Conflict, ValidationFailed
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/storage-targets", tags=["storage targets"])
log = get_logger("reelhouse.api.storage_targets")


@router.post("/create", summary="Add a storage target (S3-compatible bucket)")
async def create(
    state: State, principal: Operator, body: Annotated[StorageTargetIn, Body()]
) -> StorageTargetOut:
    await service.check_endpoint(state, body.endpoint_url)
    sealed = objectstore.seal_keys(
        service.sealer(state), body.access_key_id, body.secret_access_key
    )
    now = utcnow()
    doc = {"tenant": tenant_of(principal), **body.stored(), "credentials": sealed,
           "created": now, "modified": now}  # fmt: skip
    result = await state.db[service.COLLECTION].insert_one(doc)
    doc["_id"] = result.inserted_id
    log.info("storage_target_created", storage_id=str(result.inserted_id), bucket=body.bucket)
    return StorageTargetOut(**service.present(doc))


@router.post("/getAll", summary="The tenant's storage targets (never their credentials)")
async def get_all(state: State, principal: Principal) -> list[StorageTargetOut]:
    cursor = state.db[service.COLLECTION].find({"tenant": tenant_of(principal)}).sort("created", 1)
    return [StorageTargetOut(**service.present(doc)) async for doc in cursor.limit(1000)]


@router.post("/getById", summary="One storage target")
async def get_by_id(
    state: State, principal: Principal, body: Annotated[StorageTargetRef, Body()]
) -> StorageTargetOut:
    doc = await service.load(state.db, tenant_of(principal), body.id)
    return StorageTargetOut(**service.present(doc))


@router.post("/update", summary="Change a storage target; omitted keys stay as stored")
async def update(
    state: State, principal: Operator, body: Annotated[StorageTargetUpdate, Body()]
) -> StorageTargetOut:
    tenant = tenant_of(principal)
    doc = await service.load(state.db, tenant, body.id)
    if (body.access_key_id is None) != (body.secret_access_key is None):
        missing = "secret_access_key" if body.secret_access_key is None else "access_key_id"
        raise ValidationFailed(f"{missing}: give both keys, or neither to keep them",
                               field=missing)  # fmt: skip
    await service.check_endpoint(state, body.endpoint_url)
    changes: dict[str, object] = {**body.stored(), "modified": utcnow()}
    if body.access_key_id is not None and body.secret_access_key is not None:
        changes["credentials"] = objectstore.seal_keys(
            service.sealer(state), body.access_key_id, body.secret_access_key
        )
    await state.db[service.COLLECTION].update_one(
        {"_id": doc["_id"], "tenant": tenant}, {"$set": changes}
    )
    return StorageTargetOut(**service.present({**doc, **changes}))


@router.post(
    "/remove",
    summary="Remove a storage target no recording job names",
    responses=documented(409),
)
async def remove(
    state: State, principal: Operator, body: Annotated[StorageTargetRef, Body()]
) -> Removed:
    tenant = tenant_of(principal)
    doc = await service.load(state.db, tenant, body.id)
    for field in ("storage_id", "archive_storage_id"):
        user = await state.db[Collections.RECORDINGS].find_one(
            {"tenant": tenant, field: body.id}, {"_id": 1}
        )
        if user is not None:
            raise Conflict(
                f"recording {user['_id']} names this storage target ({field}); change or "
                "remove it first",
                field="id",
            )
    await state.db[service.COLLECTION].delete_one({"_id": doc["_id"], "tenant": tenant})
    log.info("storage_target_removed", storage_id=body.id)
    return Removed(success=True, id=body.id)


@router.post("/test", summary="Whether the bucket is reachable and writable")
async def test(
    state: State, principal: Operator, body: Annotated[StorageTargetRef, Body()]
) -> StorageTestResult:
    doc = await service.load(state.db, tenant_of(principal), body.id)
    started = time.monotonic()
    failure = await service.probe(state, doc)
    elapsed = int((time.monotonic() - started) * 1000)
    log.info("storage_target_tested", storage_id=body.id, ok=failure is None, failure=failure)
    return StorageTestResult(ok=failure is None, failure=failure, elapsed_ms=elapsed)  # type: ignore[arg-type]
