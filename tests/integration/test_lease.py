"""Job leases on the real MongoDB-compatible server (ARCHITECTURE §2)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.jobs.lease import SCAN_FIELDS, JobScan, LeaseStore, idle_claimable
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


async def test_renew_many_extends_every_lease_and_names_the_lost_ones(db: AsyncDatabase) -> None:
    ids = [await _job(db) for _ in range(6)]
    store, other = _store(db, "a", lease_s=30), _store(db, "b", lease_s=30)
    leases = [await store.claim(job_id=job_id) for job_id in ids]
    assert all(leases)
    past = utcnow() - timedelta(seconds=1)
    await db[JOBS].update_many({}, {"$set": {"runtime.lease_until": past}})

    assert await store.renew_many(leases) == set()  # all six renewed in one round trip
    async for doc in db[JOBS].find({}):
        assert doc["runtime"]["lease_until"] > utcnow() + timedelta(seconds=20)

    stopped, restarted, removed, taken = ids[:4]
    await db[JOBS].update_one({"_id": stopped}, {"$set": {"active": False}})
    await db[JOBS].update_one({"_id": restarted}, {"$inc": {"generation": 1}})
    await db[JOBS].delete_one({"_id": removed})
    await db[JOBS].update_one({"_id": taken}, {"$set": {"runtime.lease_until": past}})
    assert (await other.claim(job_id=taken)) is not None
    before = {d["_id"]: d["runtime"]["lease_until"] async for d in db[JOBS].find({})}

    assert await store.renew_many(leases) == {stopped, restarted, removed, taken}
    after = {d["_id"]: d["runtime"]["lease_until"] async for d in db[JOBS].find({})}
    assert after[ids[4]] > before[ids[4]]
    assert after[ids[5]] > before[ids[5]]
    assert after[stopped] == before[stopped]  # a lost lease is not extended
    assert after[taken] == before[taken]  # nor is another node's
    assert await store.renew_many([]) == set()


async def test_a_stop_racing_a_renewal_is_never_undone(db: AsyncDatabase) -> None:
    """Per-document atomic updates: the API's ``active: false`` survives concurrent renewals.

    FerretDB v1 alone loses one of two concurrent updates of a document (it writes the whole
    document back); tools/ferretdb-lite serializes read-modify-write commands so it does not.
    """
    ids = [await _job(db) for _ in range(10)]
    store = _store(db, "a")
    leases = [await store.claim(job_id=job_id) for job_id in ids]
    for job_id in ids:
        stop_one = db[JOBS].update_one({"_id": job_id}, {"$set": {"active": False}})
        await asyncio.gather(
            store.renew_many(leases), stop_one, store.renew_many(leases), store.renew_many(leases)
        )
    stopped = {d["_id"] async for d in db[JOBS].find({"active": False}, {"_id": 1})}
    assert stopped == set(ids)
    assert await store.renew_many(leases) == set(ids)


async def test_concurrent_updates_of_one_document_all_land(db: AsyncDatabase) -> None:
    job_id = await _job(db)
    await asyncio.gather(
        *(db[JOBS].update_one({"_id": job_id}, {"$set": {f"f{i}": i}}) for i in range(30))
    )
    doc = await db[JOBS].find_one({"_id": job_id})
    assert {f"f{i}" for i in range(30)} <= set(doc)


async def test_the_pass_scan_reads_what_claim_and_claim_idle_would_take(db: AsyncDatabase) -> None:
    """A node claims only when its one scan per pass says a claim can succeed, and the finisher
    leases idle only what ``idle_claimable`` says: both Python readings must agree with the
    server's filters, job by job, across the states a job can be in."""
    now = utcnow()
    live = {"node": "x", "lease_until": now + timedelta(seconds=30)}
    expired = {"node": "x", "lease_until": now - timedelta(seconds=1)}
    open_w = {"scheduled": True, "schedule_next_start": now - timedelta(minutes=1),
              "schedule_next_stop": now + timedelta(minutes=1)}  # fmt: skip
    later_w = {"scheduled": True, "schedule_next_start": now + timedelta(minutes=1),
               "schedule_next_stop": None}  # fmt: skip
    closed_w = {"scheduled": True, "schedule_next_start": now - timedelta(minutes=2),
                "schedule_next_stop": now - timedelta(minutes=1)}  # fmt: skip
    none_left = {"scheduled": True, "schedule_next_start": None, "schedule_next_stop": None}
    cases = {
        "free": {},
        "leased": {"runtime": live},
        "expired": {"runtime": expired},
        "runtime without lease_until": {"runtime": {"node": "x"}},
        "inactive": {"active": False},
        "inactive and leased": {"active": False, "runtime": live},
        "paused": {"paused": True},
        "paused and expired": {"paused": True, "runtime": expired},
        "window open": open_w,
        "window open, leased": {**open_w, "runtime": live},
        "window later": later_w,
        "window closed": closed_w,
        "no window left": none_left,
        "window later, expired": {**later_w, "runtime": expired},
    }
    ids = {name: await _job(db, **fields) for name, fields in cases.items()}
    names = {job_id: name for name, job_id in ids.items()}
    store = _store(db, "n")
    scan = await store.scan()
    scanned = {names[d["_id"]]: d for d in scan.docs}
    claimed, idled = set(), set()
    for name, job_id in ids.items():
        one = JobScan(now=scan.now, docs=[scanned[name]] if name in scanned else [])
        doc = await db[JOBS].find_one({"_id": job_id}, SCAN_FIELDS)
        if await store.claim(job_id=job_id) is not None:
            claimed.add(name)
            await store.release(job_id)
        assert one.claimable() == (name in claimed), name
        if await store.claim_idle(job_id) is not None:
            idled.add(name)
            await store.release(job_id)
        assert idle_claimable(doc, utcnow()) == (name in idled), name
    assert claimed == {"free", "expired", "window open"}
    assert idled == {"inactive", "paused", "paused and expired", "window later", "window closed",
                     "no window left", "window later, expired"}  # fmt: skip
    # Every scheduled job is in the scan (its windows are kept from it), and so is every job
    # that could be claimed; a job held by a live lease outside a schedule is not.
    assert {n for n, f in cases.items() if f.get("scheduled")} <= set(scanned)
    assert claimed <= set(scanned)
    assert "leased" not in scanned
    assert "inactive and leased" not in scanned
