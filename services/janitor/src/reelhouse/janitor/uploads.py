"""Uploads of recorded files to their job's storage target (issue 24), run by the janitor.

Why the janitor: it already reads the recordings' disk wherever they are written (``make up``
and the compose file's ``recordings`` volume), one is enough and several are safe, and it owns
what happens to files after they are written (docs/DECISIONS.md, "Object storage").

What is uploaded: every ``ready`` file of a recording job that names a ``storage_id`` (a split
recording's segments as each one closes; a seamless recording's file once its parts are joined).
The file record's ``upload`` block moves::

    pending → uploading (upload_id, parts done) → uploaded (key, etag, size, verified_at)
                  ↘ failed (reason, attempts, retry_at) → uploading ...

**Claims.** A file is uploaded by the janitor that created its claim key ``uploads.<file_id>``
in the live plane (one winner). A claim whose node no longer heartbeats, or that this node's
previous life left (same node id, another ``instance``), is taken over by compare-and-set.

**Crash-resumable.** The multipart upload id is stored before the first part goes, and each
finished part (number, ETag, size) is pushed onto the record as it completes. A resumed upload
asks the bucket which parts it has (``list_parts``), checks each one's ETag against the MD5 of
the same bytes of the local file, and sends only the others.

**Verified before deletion.** After ``complete_multipart_upload`` (or the single PUT) the
object's head must show the local file's size and, when the ETag is an MD5 (single PUT) or an
MD5 of MD5s (multipart), exactly the ETag computed from the local bytes. Only then is it
``uploaded``; the local copy is deleted only after that, when the job does not ``keep_local``
and its ``local_grace_hours`` have passed, and only after a second head of the object.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import re
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats.js.errors
from botocore.exceptions import ClientError
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common import objectstore
from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.credentials import cached_sealer
from reelhouse.common.events import build_event
from reelhouse.common.files import UPLOAD_BACKLOG, is_under, present_file, upload_queued
from reelhouse.common.live import LivePlane, decode
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections, find_each
from reelhouse.common.netpolicy import AddressRefused, Unresolvable, url_target

log = get_logger("reelhouse.janitor.uploads")

MODULE = "recording"
MIB = 1024 * 1024
_MD5 = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


class UploadError(Exception):
    """An upload attempt failed with a failure class (never the remote text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileRemoved(Exception):
    """The file's record went (or was marked ``deleted``) while its upload ran: whatever this
    upload put in the bucket is deleted by the uploader itself (docs/DECISIONS.md, "Object
    storage": a removal never waits for the claim)."""


class Throttle:
    """A token bucket shared by every upload of the process (``upload_max_bps``; 0: none).
    Called from boto3's worker threads, so it locks and sleeps in the caller's thread."""

    def __init__(self, bps: int) -> None:
        self.bps = bps
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if self.bps <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.bps
            wait = start + n / self.bps - now
        time.sleep(max(0.0, wait))


BACKLOG = UPLOAD_BACKLOG
"""Top-level field of a file record whose upload is pending, running or failed: its storage
target's id (unset once uploaded). The uploader finds its work and the API's ``/metrics`` counts
the backlog per target by top-level equality on it, an index on both servers, never a scan of
the archive."""


def _alive(record: dict[str, Any]) -> dict[str, Any]:
    """The filter of the record while it is not removed (removals mark it ``deleted`` first)."""
    return {"_id": record["_id"], "status": {"$ne": "deleted"}}


def _etag(value: Any) -> str:
    return str(value or "").strip('"').lower()


def part_md5(path: Path, offset: int, size: int) -> tuple[bytes, str]:
    """The bytes of one part and their MD5 (hex)."""
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(md5s: list[str]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, ``-<count>``."""
    joined = b"".join(bytes.fromhex(m) for m in md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"


class Uploader:
    """One janitor's uploads: a loop woken by ``file_ready`` events, finished uploads and timers
    (retries, local copies due, the slow repair pass), and a task per file.

    **Finding work without reading the archive.** A file to upload carries the indexed
    top-level ``upload_backlog: <storage id>`` from the write that made it ``ready``
    (:func:`reelhouse.common.files.upload_queued`). A pass lists the jobs with a target (a small
    collection) and runs one top-level equality query per target on that field: it reads the
    backlog, not the archive. The files of a job are read whole (``entity_id``) only when this
    process first sees the job with its target (at start: records from before the field, or a
    job given a target later), and one job at a time by the repair pass, every
    ``upload_repair_s``, for a record a writer left unqueued and whose event was lost.
    """

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        bus: Bus | None,
        live: LivePlane | None,
        settings: Any,
        node_id: str,
        storage_root: Path,
    ) -> None:
        self.db = db
        self.bus = bus
        self.live = live
        self.settings = settings
        self.node_id = node_id
        self.root = Path(storage_root)
        self.instance = uuid.uuid4().hex[:12]
        """This process's life: a claim with our node id and another instance is a dead one's."""
        self.throttle = Throttle(int(settings.upload_max_bps))
        self.wake = asyncio.Event()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.rates: dict[str, list[tuple[float, int]]] = {}
        """Bytes sent per storage target, (monotonic time, bytes), for the throughput gauge."""
        self.hinted: set[str] = set()
        """File ids named by ``file_ready`` events since the last pass."""
        self.seen: dict[str, str] = {}
        """Job id → the storage id this process has read the job's files for (catch-up)."""
        self.repair_order: list[str] = []
        self.retry_at: float | None = None
        """Monotonic time of the earliest ``retry_at`` of a failed upload in the backlog."""
        self.local_due: dict[str, float] = {}
        """File id → monotonic time its local copy may go (uploaded, in its grace)."""
        self.repair_at = time.monotonic() + float(settings.upload_repair_s)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        sub = None
        if self.bus is not None:
            with contextlib.suppress(Exception):
                subject = self.bus.subjects.events_of(MODULE, "file_ready")
                sub = await self.bus.nc.subscribe(subject, cb=self._on_ready)
        log.info("uploader_ready", instance=self.instance, repair_s=self.settings.upload_repair_s)
        self.wake.set()  # the first pass at once
        try:
            while not stop.is_set():
                now = time.monotonic()
                woken = self.wake.is_set()
                self.wake.clear()
                repair = now >= self.repair_at
                if repair:
                    self.repair_at = now + float(self.settings.upload_repair_s)
                retry = self.retry_at is not None and now >= self.retry_at
                try:
                    if woken or repair or retry:
                        await self.scan(repair=repair)
                    await self._remove_due_locals()
                    await self._publish_rates()
                except Exception as exc:
                    log.warning("upload_scan_failed", error=str(exc).splitlines()[0][:200])
                with contextlib.suppress(TimeoutError):
                    waiter = asyncio.ensure_future(self.wake.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    _, pending = await asyncio.wait(
                        {waiter, stopper},
                        timeout=self._next_wait(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    for task in pending:
                        task.cancel()
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            for task in list(self.running.values()):
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    def _next_wait(self) -> float:
        """Seconds until the next timer: the repair pass, the earliest retry, the earliest local
        copy due, and while bytes are being sent the rate gauge's refresh (no query)."""
        times = [self.repair_at, *self.local_due.values()]
        if self.retry_at is not None:
            times.append(self.retry_at)
        if self.rates or self.running:
            times.append(time.monotonic() + float(self.settings.upload_rate_s))
        return max(0.01, min(times) - time.monotonic())

    async def _on_ready(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            file_id = str((json.loads(msg.data).get("file") or {}).get("id") or "")
            if file_id:
                self.hinted.add(file_id)
        self.wake.set()

    async def _storage_jobs(self) -> dict[str, dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = {}
        projection = {"storage_id": 1, "keep_local": 1, "local_grace_hours": 1, "tenant": 1}
        async for job in self.db[Collections.RECORDINGS].find(
            {"storage_id": {"$type": "string"}}, projection
        ):
            jobs[str(job["_id"])] = job
        return jobs

    async def scan(self, *, repair: bool = False) -> None:
        """One pass: queue the files named by events and those of jobs not read yet (or the
        repair pass's job), then start an upload for each file of the backlog that needs one (up
        to the concurrency)."""
        jobs = await self._storage_jobs()
        for job_id in [j for j in self.seen if j not in jobs]:
            self.seen.pop(job_id, None)
        if not jobs:
            self.hinted.clear()
            self.retry_at = None
            return
        hinted, self.hinted = self.hinted, set()
        for file_id in hinted:
            with contextlib.suppress(Exception):  # not an ObjectId: nothing of ours
                record = await self.db[Collections.FILES].find_one({"_id": ObjectId(file_id)})
                if record is not None and record.get("entity_id") in jobs:
                    await self._catch_up(record, jobs[record["entity_id"]])
        unseen = [j for j, job in jobs.items() if self.seen.get(j) != str(job["storage_id"])]
        if repair and not unseen:
            self.repair_order = [j for j in self.repair_order if j in jobs] or sorted(jobs)
            unseen = [self.repair_order.pop(0)]
        for job_id in unseen:
            await self._read_job(jobs[job_id])
        await self._start_backlog(jobs)

    async def _read_job(self, job: dict[str, Any]) -> None:
        """Every file record of one job (top-level equality on ``entity_id``): queue the ready
        ones that were not (:meth:`_catch_up`)."""
        job_id = str(job["_id"])
        async for record in self.db[Collections.FILES].find({"entity_id": job_id}):
            await self._catch_up(record, job)
        self.seen[job_id] = str(job["storage_id"])

    async def _catch_up(self, record: dict[str, Any], job: dict[str, Any]) -> None:
        if record.get("status") != "ready":
            return
        upload = record.get("upload") or {}
        state = upload.get("state")
        if state is None:
            await self._mark_pending(record, job)
        elif state == "uploaded":
            self._remember_local(record, job)
        elif record.get(BACKLOG) is None and upload.get("storage_id"):
            # A record from before the backlog field: found by the index from now on.
            await self.db[Collections.FILES].update_one(
                _alive(record), {"$set": {BACKLOG: str(upload["storage_id"])}}
            )

    async def _start_backlog(self, jobs: dict[str, dict[str, Any]]) -> None:
        """One top-level equality query per target on ``upload_backlog`` (indexed)."""
        targets = {str(job["storage_id"]) for job in jobs.values()}
        found = await find_each(self.db[Collections.FILES], BACKLOG, targets)
        now = utcnow()
        earliest: datetime | None = None
        for record in sorted(found, key=lambda r: (r["created"], r["_id"])):
            if record.get("status") != "ready" or record.get("entity_id") not in jobs:
                continue
            upload = record.get("upload") or {}
            state = upload.get("state")
            if state == "uploaded":
                continue
            if state == "failed" and upload.get("retry_at") and upload["retry_at"] > now:
                earliest = min(earliest or upload["retry_at"], upload["retry_at"])
                continue
            file_id = str(record["_id"])
            if file_id in self.running or len(self.running) >= self.settings.upload_concurrency:
                continue
            task = asyncio.create_task(self._upload_claimed(record), name=f"upload-{file_id}")
            self.running[file_id] = task
            task.add_done_callback(lambda _t, f=file_id: self._finished(f))
        self.retry_at = (
            None if earliest is None
            else time.monotonic() + max(0.0, (earliest - utcnow()).total_seconds())
        )  # fmt: skip

    def _finished(self, file_id: str) -> None:
        """An upload task ended: another pass (the next file of the backlog, or its retry)."""
        self.running.pop(file_id, None)
        self.wake.set()

    def _remember_local(self, record: dict[str, Any], job: dict[str, Any]) -> None:
        """An uploaded file whose local copy is to go: when its grace ends (a timer)."""
        upload = record.get("upload") or {}
        verified = upload.get("verified_at")
        if job.get("keep_local") or record.get("local_removed_at") or verified is None:
            return
        due = verified + timedelta(hours=float(job.get("local_grace_hours") or 0))
        wait = max(0.0, (due - utcnow()).total_seconds())
        self.local_due[str(record["_id"])] = time.monotonic() + wait

    async def _remove_due_locals(self) -> None:
        now = time.monotonic()
        for file_id in [f for f, due in self.local_due.items() if due <= now]:
            self.local_due.pop(file_id, None)
            record = await self.db[Collections.FILES].find_one({"_id": ObjectId(file_id)})
            if record is None or record.get("status") == "deleted":
                continue
            job = await self.db[Collections.RECORDINGS].find_one(
                {"_id": ObjectId(str(record["entity_id"]))},
                {"keep_local": 1, "local_grace_hours": 1},
            )
            if job is not None:
                await self._maybe_remove_local(record, job, utcnow())

    async def _mark_pending(self, record: dict[str, Any], job: dict[str, Any]) -> Any:
        return await self.db[Collections.FILES].find_one_and_update(
            {"_id": record["_id"], "status": "ready", "upload": {"$exists": False}},
            {"$set": upload_queued(job["storage_id"], utcnow())},
            return_document=ReturnDocument.AFTER,
        )

    # -- claims -------------------------------------------------------------------------------

    def _claim_value(self) -> bytes:
        return json.dumps({"node": self.node_id, "instance": self.instance,
                           "service": "janitor", "since": time.time()}).encode()  # fmt: skip

    async def _claim(self, file_id: str) -> int | None:
        """The claim's revision if this process now uploads the file, else None."""
        if self.live is None or self.live.kv is None:
            return None
        kv = self.live.kv
        key = self.live.subjects.live_upload(file_id)
        try:
            return await kv.create(key, self._claim_value())
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            current = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        value = decode(current.value)
        if value is not None:
            node = str(value.get("node", ""))
            if node == self.node_id:
                if value.get("instance") == self.instance:
                    return None  # ours, running
            elif await self.live.node_alive_now(node, "janitor"):
                return None  # another live janitor has it
        try:  # free, or left by a dead uploader: compare-and-set, one winner
            return await kv.update(key, self._claim_value(), last=current.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def _release(self, file_id: str, revision: int) -> None:
        if self.live is None or self.live.kv is None:
            return
        with contextlib.suppress(Exception):
            await self.live.kv.delete(self.live.subjects.live_upload(file_id), last=revision)

    # -- one file -----------------------------------------------------------------------------

    async def _upload_claimed(self, record: dict[str, Any]) -> None:
        file_id = str(record["_id"])
        revision = await self._claim(file_id)
        if revision is None:
            return
        try:
            fresh = await self.db[Collections.FILES].find_one({"_id": record["_id"]})
            if fresh is None or fresh.get("status") != "ready":
                return
            if (fresh.get("upload") or {}).get("state") == "uploaded":
                return
            await self._upload(fresh)
        except asyncio.CancelledError:
            raise
        except UploadError as exc:
            await self._failed(record, exc.reason)
        except Exception as exc:
            log.warning("upload_error", file_id=file_id, error=type(exc).__name__)
            await self._failed(record, objectstore.classify(exc))
        finally:
            await self._release(file_id, revision)

    async def _target(self, tenant: str, storage_id: str) -> objectstore.Target:
        doc = await self.db[objectstore.STORAGE_TARGETS].find_one(
            {"_id": ObjectId(storage_id), "tenant": tenant}
        )
        if doc is None:
            raise UploadError("no_target")
        fernet = cached_sealer(self.settings)
        if fernet is None:
            raise UploadError("auth")
        try:
            target = objectstore.Target.of(doc, fernet)
        except ValueError:
            raise UploadError("auth") from None
        host, port = url_target(target.endpoint_url, role="output")  # type: ignore[misc]
        try:  # the URL policy again at use: a name may resolve elsewhere than when stored
            await self.settings.net_policy().resolve(host, port)
        except AddressRefused:
            raise UploadError("forbidden_address") from None
        except Unresolvable:
            raise UploadError("unreachable") from None
        return target

    async def _upload(self, record: dict[str, Any]) -> None:
        files = self.db[Collections.FILES]
        upload = dict(record.get("upload") or {})
        storage_id = str(upload.get("storage_id"))
        path = Path(str(record.get("file_path", "")))
        if not is_under(self.root, path) or not await asyncio.to_thread(path.is_file):
            raise UploadError("missing")
        size = (await asyncio.to_thread(path.stat)).st_size
        target = await self._target(str(record.get("tenant", "")), storage_id)
        key = upload.get("key") or target.key(str(record["entity_id"]), path.name)
        part_size = int(upload.get("part_size") or self.settings.upload_part_size_mb * MIB)
        s3 = objectstore.client(target, timeout_s=self.settings.upload_timeout_s)
        now = utcnow()
        fields = {"upload.state": "uploading", "upload.key": key, "upload.size": size,
                  "upload.part_size": part_size, "upload.node": self.node_id,
                  "upload.started_at": upload.get("started_at") or now,
                  "modified": now}  # fmt: skip
        # Every write of the upload is guarded by the record's presence: removeFile, remove and
        # retention mark it `deleted` (atomically) before they read its key and delete the object,
        # so either they see this upload's key, or this upload sees the mark and deletes what it
        # put itself (FileRemoved below). Nothing is left behind either way.
        started = await files.find_one_and_update(
            _alive(record), {"$set": fields}, return_document=ReturnDocument.AFTER
        )
        if started is None:
            log.info("upload_dropped", file_id=str(record["_id"]), reason="file_removed")
            return
        await self._event(started, "upload_started")
        try:
            if size <= part_size:
                expected = await self._put_single(s3, target, key, path, record, storage_id)
            else:
                expected = await self._put_multipart(
                    s3, target, key, path, size, part_size, record, upload, storage_id
                )
            head = await asyncio.to_thread(objectstore.head, target, key)
            if head is None or int(head.get("ContentLength", -1)) != size:
                raise UploadError("verify")
            etag = _etag(head.get("ETag"))
            checked = "size"
            if _MD5.match(etag):
                if etag != expected:
                    raise UploadError("verify")
                checked = "size+etag"
            now = utcnow()
            done = await files.find_one_and_update(
                _alive(record),
                {"$set": {"upload.state": "uploaded", "upload.etag": etag, "upload.size": size,
                          "upload.verified": checked, "upload.verified_at": now,
                          "upload.uploaded_at": now, "modified": now},
                 "$unset": {"upload.reason": "", "upload.retry_at": "", "upload.upload_id": "",
                            BACKLOG: ""}},
                return_document=ReturnDocument.AFTER,
            )  # fmt: skip
            if done is None:
                raise FileRemoved
        except FileRemoved:
            await self._drop_object(target, key, record)
            return
        log.info("upload_complete", file_id=str(record["_id"]), key=key, size_bytes=size,
                 verified=checked)  # fmt: skip
        if done is not None:
            await self._event(done, "upload_complete")
            job = await self.db[Collections.RECORDINGS].find_one(
                {"_id": ObjectId(str(record["entity_id"]))},
                {"keep_local": 1, "local_grace_hours": 1},
            )
            if job is not None:
                await self._maybe_remove_local(done, job, utcnow())

    async def _put_single(
        self, s3: Any, target: objectstore.Target, key: str, path: Path, record: dict[str, Any],
        storage_id: str,
    ) -> str:  # fmt: skip
        data = await asyncio.to_thread(path.read_bytes)
        md5 = hashlib.md5(data, usedforsecurity=False)
        extra: dict[str, Any] = {"ContentMD5": base64.b64encode(md5.digest()).decode()}
        if target.storage_class:
            extra["StorageClass"] = target.storage_class
        await asyncio.to_thread(self.throttle.take, len(data))
        await asyncio.to_thread(s3.put_object, Bucket=target.bucket, Key=key, Body=data, **extra)
        self._count(storage_id, len(data))
        return md5.hexdigest()

    async def _put_multipart(
        self, s3: Any, target: objectstore.Target, key: str, path: Path, size: int,
        part_size: int, record: dict[str, Any], upload: dict[str, Any], storage_id: str,
    ) -> str:  # fmt: skip
        files = self.db[Collections.FILES]
        count = (size + part_size - 1) // part_size
        upload_id = upload.get("upload_id")
        in_bucket: dict[int, str] = {}
        if upload_id:
            try:
                in_bucket = await asyncio.to_thread(self._list_parts, s3, target, key, upload_id)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) != "NoSuchUpload":
                    raise
                upload_id = None  # aborted or expired: start again
        if not upload_id:
            extra = {"StorageClass": target.storage_class} if target.storage_class else {}
            created = await asyncio.to_thread(
                s3.create_multipart_upload, Bucket=target.bucket, Key=key, **extra
            )
            upload_id = str(created["UploadId"])
            in_bucket = {}
            stored = await files.update_one(
                _alive(record),
                {"$set": {"upload.upload_id": upload_id, "upload.parts": [],
                          "upload.bytes_done": 0, "modified": utcnow()}},
            )  # fmt: skip
            if stored.matched_count == 0:
                await self._abort(s3, target, key, upload_id)
                raise FileRemoved
        md5s: list[str] = []
        bytes_done = 0
        last_event = 0.0
        resumed = [n for n in sorted(in_bucket) if n <= count]
        if resumed:
            log.info("upload_resumed", file_id=str(record["_id"]), upload_id=upload_id,
                     parts_in_bucket=resumed)  # fmt: skip
        for number in range(1, count + 1):
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            data, md5 = await asyncio.to_thread(part_md5, path, offset, length)
            if in_bucket.get(number) == md5:
                md5s.append(md5)  # finished before: not sent again
                bytes_done += length
                continue
            await asyncio.to_thread(self.throttle.take, length)
            sent = await asyncio.to_thread(
                s3.upload_part, Bucket=target.bucket, Key=key, UploadId=upload_id,
                PartNumber=number, Body=data,
            )  # fmt: skip
            etag = _etag(sent.get("ETag"))
            if _MD5.match(etag) and etag != md5:
                raise UploadError("verify")
            self._count(storage_id, length)
            md5s.append(md5)
            bytes_done += length
            log.info("upload_part_sent", file_id=str(record["_id"]), part=number,
                     instance=self.instance)  # fmt: skip
            pushed = await files.update_one(
                {**_alive(record), "upload.upload_id": upload_id},
                {"$push": {"upload.parts": {"n": number, "etag": etag, "size": length,
                                            "by": self.instance}},
                 "$set": {"upload.bytes_done": bytes_done, "modified": utcnow()}},
            )  # fmt: skip
            if pushed.matched_count == 0 and await files.count_documents(_alive(record)) == 0:
                await self._abort(s3, target, key, upload_id)
                raise FileRemoved
            if time.monotonic() - last_event >= 1.0:
                last_event = time.monotonic()
                now_upload = {**(record.get("upload") or {}), "state": "uploading",
                              "upload_id": upload_id, "bytes_done": bytes_done, "size": size,
                              "key": key}  # fmt: skip
                await self._event({**record, "upload": now_upload}, "upload_progress",
                                  progress_pct=round(100.0 * bytes_done / size, 1))  # fmt: skip
        parts = [{"PartNumber": n, "ETag": f'"{m}"'} for n, m in enumerate(md5s, start=1)]
        await asyncio.to_thread(
            s3.complete_multipart_upload, Bucket=target.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )  # fmt: skip
        return multipart_etag(md5s)

    @staticmethod
    async def _abort(s3: Any, target: objectstore.Target, key: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):  # NoSuchUpload: the removal aborted it already
            await asyncio.to_thread(
                s3.abort_multipart_upload, Bucket=target.bucket, Key=key, UploadId=upload_id
            )

    async def _drop_object(
        self, target: objectstore.Target, key: str, record: dict[str, Any]
    ) -> None:
        """Delete the object this upload put for a file removed meanwhile (three tries; a
        bucket away for all of them leaves it, logged with its key as ``object_left``)."""
        for attempt in range(3):
            try:
                await asyncio.to_thread(objectstore.delete, target, key)
            except Exception as exc:
                if attempt == 2:
                    log.warning("object_left", file_id=str(record["_id"]), key=key,
                                failure=objectstore.classify(exc))  # fmt: skip
                    return
                await asyncio.sleep(1.0 + attempt * 2)
            else:
                log.info("upload_dropped", file_id=str(record["_id"]), key=key,
                         reason="file_removed")  # fmt: skip
                return

    @staticmethod
    def _list_parts(
        s3: Any, target: objectstore.Target, key: str, upload_id: str
    ) -> dict[int, str]:
        found: dict[int, str] = {}
        marker = 0
        while True:
            page = s3.list_parts(Bucket=target.bucket, Key=key, UploadId=upload_id,
                                 PartNumberMarker=marker)  # fmt: skip
            for part in page.get("Parts", []):
                found[int(part["PartNumber"])] = _etag(part.get("ETag"))
            if not page.get("IsTruncated"):
                return found
            marker = int(page.get("NextPartNumberMarker") or 0)

    async def _failed(self, record: dict[str, Any], reason: str) -> None:
        fresh = await self.db[Collections.FILES].find_one({"_id": record["_id"]}, {"upload": 1})
        attempts = int(((fresh or {}).get("upload") or {}).get("attempts") or 0) + 1
        base = self.settings.upload_retry_initial_s * (2 ** min(attempts - 1, 20))
        delay = min(self.settings.upload_retry_max_s, base) * random.uniform(0.5, 1.0)  # noqa: S311
        now = utcnow()
        done = await self.db[Collections.FILES].find_one_and_update(
            {**_alive(record), "upload.state": {"$ne": "uploaded"}},
            {"$set": {"upload.state": "failed", "upload.reason": reason,
                      "upload.attempts": attempts, "upload.failed_at": now,
                      "upload.retry_at": now + timedelta(seconds=delay), "modified": now}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        log.warning("upload_failed", file_id=str(record["_id"]), reason=reason,
                    attempts=attempts, retry_in_s=round(delay, 1))  # fmt: skip
        if done is not None:
            await self._event(done, "upload_failed", reason=reason, delay_s=round(delay, 2))

    # -- the local copy -------------------------------------------------------------------

    async def _maybe_remove_local(
        self, record: dict[str, Any], job: dict[str, Any], now: datetime
    ) -> None:
        if job.get("keep_local") or record.get("local_removed_at"):
            return
        upload = record.get("upload") or {}
        grace = timedelta(hours=float(job.get("local_grace_hours") or 0))
        verified = upload.get("verified_at")
        if upload.get("state") != "uploaded" or verified is None:
            return
        if verified + grace > now:
            self._remember_local(record, job)  # a timer to the end of its grace
            return
        path = Path(str(record.get("file_path", "")))
        if not is_under(self.root, path):
            return
        try:  # never delete before the object is there: look once more
            target = await self._target(str(record.get("tenant", "")), str(upload["storage_id"]))
            head = await asyncio.to_thread(objectstore.head, target, str(upload["key"]))
        except Exception as exc:
            log.warning("local_copy_kept", file_id=str(record["_id"]), error=type(exc).__name__)
            self._look_again(record)
            return
        if head is None or int(head.get("ContentLength", -1)) != int(upload.get("size", -2)):
            log.warning("local_copy_kept", file_id=str(record["_id"]), error="object_mismatch")
            self._look_again(record)
            return
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)
        await self.db[Collections.FILES].update_one(
            {"_id": record["_id"]}, {"$set": {"local_removed_at": utcnow(), "modified": utcnow()}}
        )
        log.info("local_copy_removed", file_id=str(record["_id"]), path=str(path))

    def _look_again(self, record: dict[str, Any]) -> None:
        """The object could not be confirmed: the local copy is looked at again later."""
        self.local_due[str(record["_id"])] = time.monotonic() + float(self.settings.upload_repair_s)

    # -- events and rates -----------------------------------------------------------------

    async def _event(self, record: dict[str, Any], event: str, **fields: Any) -> None:
        if self.bus is None:
            return
        job_id = str(record.get("entity_id", ""))
        try:
            message = build_event(event, module=MODULE, job_id=job_id,
                                  tenant=str(record.get("tenant", "")), node=self.node_id,
                                  file=present_file(record), **fields)  # fmt: skip
            await self.bus.publish(self.bus.subjects.event(MODULE, job_id, event), message)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("event_not_sent", job_id=job_id, event=event, error=str(exc)[:200])

    def _count(self, storage_id: str, n: int) -> None:
        self.rates.setdefault(storage_id, []).append((time.monotonic(), n))

    def rate(self, storage_id: str, window_s: float = 10.0) -> float:
        """Bytes a second sent to ``storage_id`` over the last ``window_s`` seconds."""
        cutoff = time.monotonic() - window_s
        samples = [s for s in self.rates.get(storage_id, []) if s[0] >= cutoff]
        self.rates[storage_id] = samples
        return sum(n for _, n in samples) / window_s

    async def _publish_rates(self) -> None:
        if self.live is None or self.live.kv is None or not self.rates:
            return
        for storage_id in list(self.rates):
            value = json.dumps({"bps": self.rate(storage_id), "node": self.node_id}).encode()
            subject = self.live.subjects.live_key_subject(
                self.live.subjects.live_upload_rate(storage_id, self.node_id)
            )
            with contextlib.suppress(Exception):
                await self.live.bus.nc.publish(subject, value, headers={"Nats-TTL": "30"})
            if not self.rates[storage_id]:
                self.rates.pop(storage_id, None)
