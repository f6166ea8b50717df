"""Job leases on the real MongoDB-compatible server (ARCHITECTURE §2)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.jobs.lease import LeaseStore
from reelhouse.common.mongo import Collections

JOBS = Collections.RECORDINGS


async def _job(db: AsyncDatabase, *, active: bool = True, **extra: object) -> ObjectId:
    now = utcnow()
    doc = {"active": active, "generation": 0, "created": now, "modified": now, **extra}
    return (await db[JOBS].insert_one(doc)).inserted_id


def _store(db: AsyncDatabase, node: str, lease_s: float = 30.0) -> LeaseStore:
    return LeaseStore(db=db, collection=JOBS, node_id=node, lease_s=lease_s)


async def test_only_one_of_many_concurrent_claims_wins(db: AsyncDatabase) -> None:
    job_id = await _job(db)
    stores = [_store(db, f"node-{i}") for i in range(8)]
    leases = await asyncio.gather(*(s.claim(job_id=job_id) for s in stores))
    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    doc = await db[JOBS].find_one({"_id": job_id})
    assert doc["runtime"]["node"] == stores[leases.index(winners[0])].node_id
    assert doc["runtime"]["generation"] == 0
    assert doc["runtime"]["lease_until"] > utcnow()


async def test_inactive_and_leased_jobs_are_not_claimed(db: AsyncDatabase) -> None:
    await _job(db, active=False)
    leased = await _job(db)
    a, b = _store(db, "a"), _store(db, "b")
    assert (await a.claim(job_id=leased)) is not None
    assert await b.claim() is None  # the only active job is leased, the other is inactive


async def test_expired_lease_is_taken_over_and_the_old_owner_loses_it(db: AsyncDatabase) -> None:
    job_id = await _job(db)
    old, new = _store(db, "old"), _store(db, "new")
    lease = await old.claim(job_id=job_id)
    assert lease is not None
    past = utcnow() - timedelta(seconds=1)
    await db[JOBS].update_one({"_id": job_id}, {"$set": {"runtime.lease_until": past}})
    taken = await new.claim()
    assert taken is not None
    assert taken.job_id == job_id
    assert await old.renew(lease) is False
    assert await old.release(job_id) is False  # must not clear the new owner's runtime
    assert (await db[JOBS].find_one({"_id": job_id}))["runtime"]["node"] == "new"


async def test_renew_fails_once_stopped_or_restarted_and_hold_keeps_it(db: AsyncDatabase) -> None:
    job_id = await _job(db)
    store = _store(db, "a", lease_s=5)
    lease = await store.claim(job_id=job_id)
    assert lease is not None
    assert await store.renew(lease, {"state": "running", "pid": 42}) is True
    doc = await db[JOBS].find_one({"_id": job_id})
    assert doc["runtime"]["state"] == "running"
    assert doc["runtime"]["pid"] == 42

    await db[JOBS].update_one({"_id": job_id}, {"$inc": {"generation": 1}})  # API restart
    assert await store.renew(lease) is False
    assert await store.hold(lease, {"state": "stopping"}) is True  # still ours while stopping
    assert await store.release(job_id) is True
    doc = await db[JOBS].find_one({"_id": job_id})
    assert "runtime" not in doc

    again = await store.claim()
    assert again is not None
    assert again.generation == 1
    await db[JOBS].update_one({"_id": job_id}, {"$set": {"active": False}})  # API stop
    assert await store.renew(again) is False


async def test_claim_skips_excluded_jobs_and_takes_the_oldest(db: AsyncDatabase) -> None:
    first = await _job(db)
    second = await _job(db, created=utcnow() + timedelta(seconds=1))
    store = _store(db, "a")
    assert (await store.claim(exclude=[first])).job_id == second
    assert await store.claim(exclude=[first, second]) is None
    assert (await store.claim()).job_id == first
