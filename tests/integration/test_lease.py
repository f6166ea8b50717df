"""Job ownership in the live plane (docs/ARCHITECTURE.md §2) on a real nats-server and the real
MongoDB-compatible server: owner keys created atomically, taken over by compare-and-set when a
node's heartbeat key expires, checks that name the jobs a node must stop."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from support.wait import eventually

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.jobs.lease import SCAN_FIELDS, JobScan, LeaseStore, idle_claimable
from reelhouse.common.live import LivePlane
from reelhouse.common.mongo import Collections

JOBS = Collections.RECORDINGS


async def _job(db: AsyncDatabase, *, active: bool = True, **extra: object) -> ObjectId:
    now = utcnow()
    doc = {"active": active, "generation": 0, "created": now, "modified": now,
           "tenant": "default", **extra}  # fmt: skip
    return (await db[JOBS].insert_one(doc)).inserted_id


def _store(db: AsyncDatabase, live: LivePlane) -> LeaseStore:
    return LeaseStore(db=db, collection=JOBS, live=live, kind="recording", node_id=live.node_id)


async def test_only_one_of_many_concurrent_claims_wins(db: AsyncDatabase, plane) -> None:
    job_id = await _job(db)
    stores = [_store(db, await plane(f"node-{i}")) for i in range(6)]
    leases = await asyncio.gather(*(s.claim(job_id=job_id) for s in stores))
    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    winner = stores[leases.index(winners[0])]
    doc = await db[JOBS].find_one({"_id": job_id})
    assert doc["runtime"]["node"] == winner.node_id
    assert doc["runtime"]["generation"] == 0
    owner = await winner.live.owner("recording", str(job_id))
    assert owner is not None
    assert owner.node == winner.node_id
    assert owner.value["tenant"] == "default"
    assert owner.revision == winners[0].revision


async def test_inactive_and_owned_jobs_are_not_claimed(db: AsyncDatabase, plane) -> None:
    await _job(db, active=False)
    owned = await _job(db)
    a, b = _store(db, await plane("a")), _store(db, await plane("b"))
    assert (await a.claim(job_id=owned)) is not None
    await eventually(lambda: b.owned_ids(), timeout=5, what="b to see a's owner key")
    assert await b.claim() is None  # the only active job is owned, the other is inactive
    assert await b.claim(job_id=owned) is None  # even named, and even past b's own map


async def test_a_dead_nodes_job_is_taken_over_by_exactly_one_peer(
    db: AsyncDatabase, plane, settings_env
) -> None:
    """The owner's heartbeat key expires (its process stopped heartbeating); every peer hears
    the expiry marker; of five peers racing the compare-and-set, exactly one wins; the old owner
    can no longer release (it would clear the new owner's runtime)."""
    job_id = await _job(db)
    old_live = await plane("old")
    old = _store(db, old_live)
    lease = await old.claim(job_id=job_id)
    assert lease is not None
    peers = [_store(db, await plane(f"peer-{i}")) for i in range(5)]
    heard: list[str] = []
    for peer in peers:
        peer.live.on_node_gone.append(lambda service, node, h=heard: _append(h, node))
    await eventually(lambda: all(p.live.alive("old") for p in peers), timeout=5,
                     what="the peers to see old heartbeat")  # fmt: skip

    old_live._heartbeat = False  # the node hangs: no more heartbeats, its key expires
    await eventually(lambda: len(heard) == len(peers), timeout=10, what="every peer to hear it")
    assert set(heard) == {"old"}
    for peer in peers:
        assert not peer.live.alive("old")
        assert not peer.live.alive("old", "recorder")
        assert not await peer.live.node_alive_now("old", "recorder")
    entry = peers[0].live.owners[("recording", str(job_id))]
    assert entry.node == "old"
    taken = await asyncio.gather(*(p.take_over(p.live.owners[entry.kind, entry.job_id])
                                   for p in peers))  # fmt: skip
    winners = [t for t in taken if t is not None]
    assert len(winners) == 1
    new = peers[taken.index(winners[0])]
    assert (await db[JOBS].find_one({"_id": job_id}))["runtime"]["node"] == new.node_id
    assert (await new.live.owner("recording", str(job_id))).node == new.node_id

    assert await old.release(lease) is False  # its revision is gone
    assert (await db[JOBS].find_one({"_id": job_id}))["runtime"]["node"] == new.node_id
    assert await old.check([lease]) == {job_id}  # and its check tells it to stop


async def _append(into: list[str], node: str) -> None:
    into.append(node)


async def test_check_names_the_jobs_a_node_must_stop(db: AsyncDatabase, plane) -> None:
    ids = [await _job(db) for _ in range(7)]
    store, other = _store(db, await plane("a")), _store(db, await plane("b"))
    leases = [await store.claim(job_id=job_id) for job_id in ids]
    assert all(leases)
    assert await store.check(leases) == set()
    assert await store.check([]) == set()

    stopped, restarted, removed, paused, closed, taken = ids[:6]
    now = utcnow()
    await db[JOBS].update_one({"_id": stopped}, {"$set": {"active": False}})
    await db[JOBS].update_one({"_id": restarted}, {"$inc": {"generation": 1}})
    await db[JOBS].delete_one({"_id": removed})
    await db[JOBS].update_one({"_id": paused}, {"$set": {"paused": True}})
    await db[JOBS].update_one(
        {"_id": closed},
        {"$set": {"scheduled": True, "schedule_next_start": now - timedelta(minutes=2),
                  "schedule_next_stop": now - timedelta(seconds=1)}},
    )  # fmt: skip
    lease = leases[ids.index(taken)]
    assert await other.live.take_over("recording", str(taken), lease.revision) is not None
    await eventually(lambda: store.live.owners[("recording", str(taken))].node == "b",
                     timeout=5, what="a to see b's take-over")  # fmt: skip

    assert await store.check(leases) == {stopped, restarted, removed, paused, closed, taken}
    # Released at its revision: the owner key goes, and runtime with it.
    keep = leases[6]
    assert await store.release(keep) is True
    assert "runtime" not in await db[JOBS].find_one({"_id": keep.job_id})
    assert await store.live.owner("recording", str(keep.job_id)) is None
    again = await store.claim(job_id=keep.job_id)
    assert again is not None
    assert again.revision > keep.revision


async def test_claim_skips_excluded_jobs_and_takes_the_oldest(db: AsyncDatabase, plane) -> None:
    first = await _job(db)
    second = await _job(db, created=utcnow() + timedelta(seconds=1))
    store = _store(db, await plane("a"))
    assert (await store.claim(exclude=[first])).job_id == second
    assert await store.claim(exclude=[first]) is None  # second is owned now
    assert (await store.claim()).job_id == first


async def test_concurrent_updates_of_one_document_all_land(db: AsyncDatabase) -> None:
    """The local server stays atomic per document (tools/ferretdb-lite's proxy): FerretDB v1
    alone loses concurrent updates of one document."""
    job_id = await _job(db)
    await asyncio.gather(
        *(db[JOBS].update_one({"_id": job_id}, {"$set": {f"f{i}": i}}) for i in range(30))
    )
    doc = await db[JOBS].find_one({"_id": job_id})
    assert {f"f{i}" for i in range(30)} <= set(doc)


async def test_the_pass_scan_reads_what_claim_and_claim_idle_would_take(
    db: AsyncDatabase, plane
) -> None:
    """A node claims only when its one scan per pass says a claim can succeed, and the finisher
    owns idle only what ``idle_claimable`` says: both Python readings must agree with what the
    claims really take, job by job, across the states a job can be in."""
    now = utcnow()
    open_w = {"scheduled": True, "schedule_next_start": now - timedelta(minutes=1),
              "schedule_next_stop": now + timedelta(minutes=1)}  # fmt: skip
    later_w = {"scheduled": True, "schedule_next_start": now + timedelta(minutes=1),
               "schedule_next_stop": None}  # fmt: skip
    closed_w = {"scheduled": True, "schedule_next_start": now - timedelta(minutes=2),
                "schedule_next_stop": now - timedelta(minutes=1)}  # fmt: skip
    none_left = {"scheduled": True, "schedule_next_start": None, "schedule_next_stop": None}
    cases = {
        "free": {},
        "owned": {},
        "inactive": {"active": False},
        "inactive and owned": {"active": False},
        "paused": {"paused": True},
        "window open": open_w,
        "window open, owned": open_w,
        "window later": later_w,
        "window closed": closed_w,
        "no window left": none_left,
    }
    ids = {name: await _job(db, **fields) for name, fields in cases.items()}
    names = {job_id: name for name, job_id in ids.items()}
    holder = await plane("x")
    for name, job_id in ids.items():
        if "owned" in name:
            assert await holder.claim("recording", str(job_id), tenant="default") is not None
    store = _store(db, await plane("n"))
    await eventually(lambda: len(store.owned_ids()) == 3, timeout=5, what="n to see x's keys")
    scan = await store.scan()
    scanned = {names[d["_id"]]: d for d in scan.docs}
    claimed, idled = set(), set()
    for name, job_id in ids.items():
        one = JobScan(now=scan.now, docs=[scanned[name]] if name in scanned else [],
                      owned=scan.owned)  # fmt: skip
        doc = await db[JOBS].find_one({"_id": job_id}, SCAN_FIELDS)
        owned_before = store.owned_ids()
        if (lease := await store.claim(job_id=job_id)) is not None:
            claimed.add(name)
            await store.release(lease)
        assert one.claimable() == (name in claimed), name
        if (lease := await store.claim_idle(job_id)) is not None:
            idled.add(name)
            await store.release(lease)
        assert idle_claimable(doc, utcnow(), owned_before) == (name in idled), name
    assert claimed == {"free", "window open"}
    assert idled == {"inactive", "paused", "window later", "window closed", "no window left"}
    # Every scheduled job is in the scan (its windows are kept from it), and so is every job
    # that could be claimed.
    assert {n for n, f in cases.items() if f.get("scheduled")} <= set(scanned)
    assert claimed <= set(scanned)
