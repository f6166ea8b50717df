"""Scale-out and faults (issue 8): drain, no split brain, NATS and MongoDB outages, bad sources,
create/remove churn. Real nats-server, FerretDB and FFmpeg; recorders are subprocesses; outages are
real servers stopped and started again (their own instances, so other tests are not disturbed), and
a node is cut off from MongoDB by a real TCP proxy (:mod:`support.netproxy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from support import infra as local
from support.events import Events
from support.livekv import node_beat
from support.media import ffmpeg_children, free_port
from support.netproxy import TcpProxy
from support.stack import HEADERS, Stack, running_stack
from support.wait import eventually
from test_recording_jobs import job, job_body, out_time_s, stop_and_wait, wait_recorded

from reelhouse.common.mongo import Collections


@contextlib.asynccontextmanager
async def stack_on(service_env: dict[str, str], tmp: Path, **env: str) -> AsyncIterator[Stack]:
    async with running_stack({**service_env, **env}, tmp) as stack:
        yield stack


async def nodes_running(db: Any, count: int) -> None:
    async def enough() -> bool:
        query = {"service": "recorder", "state": "running"}
        return await db[Collections.NODES].count_documents(query) >= count

    await eventually(enough, timeout=30, what=f"{count} recorder node(s)")


async def heartbeating(env: dict[str, str], node: str) -> None:
    """Until the recorder's key is in the live plane: the drain decides by the nodes its own
    watcher saw there, and the MongoDB row (``nodes_running``) is written before the first beat."""
    url, prefix = env["REELHOUSE_NATS_URL"], env["REELHOUSE_SUBJECT_PREFIX"]
    await eventually(lambda: node_beat(url, prefix, "recorder", node), timeout=30,
                     what=f"{node} in the live plane")  # fmt: skip


async def runtime_of(stack: Stack, job_id: str) -> dict[str, Any]:
    return (await job(stack, job_id))["runtime"] or {}


async def running_on(stack: Stack, job_id: str, node: str, timeout: float = 30) -> dict[str, Any]:
    async def there() -> dict[str, Any] | None:
        rt = await runtime_of(stack, job_id)
        return rt if rt.get("node") == node and rt.get("state") == "running" else None

    return await eventually(there, timeout=timeout, what=f"the job running on {node}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def one_ffmpeg(ppid: int) -> int:
    (pid,) = [pid for pid, state in ffmpeg_children(ppid) if state != "Z"]
    return pid


# -- drain ------------------------------------------------------------------------------------


async def test_sigterm_drains_hands_the_job_over_at_once_and_the_gap_is_recorded(
    service_env, tmp_path, db, srt_source
):
    # A long reconcile pass: a takeover before it shows the job was released and hinted.
    async with stack_on(service_env, tmp_path) as stack:
        first = await stack.start_recorder(REELHOUSE_RECONCILE_S="60")
        await nodes_running(db, 1)
        job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]
        await running_on(stack, job_id, "recorder-1")
        await wait_recorded(stack, job_id, 4.0)
        await stack.start_recorder(REELHOUSE_RECONCILE_S="60")
        await nodes_running(db, 2)
        await heartbeating(service_env, "recorder-2")
        sent = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        await running_on(stack, job_id, "recorder-2", timeout=25)
        assert time.monotonic() - sent < 25  # well before the 60 s reconcile pass
        assert await first.wait(timeout=20) == 0
        assert "drained" in first.output()
        before = await out_time_s(stack, job_id)
        await wait_recorded(stack, job_id, before + 3.0)
        (joined,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
        stored = await db[Collections.FILES].find_one({"entity_id": job_id})
        report = stored["integrity"]
        assert joined["status"] == "ready"
        assert report["parts"] == 2
        gap_ms = sum(g["duration_ms"] for g in report["gaps"])
        assert gap_ms <= 6000, report["gaps"]  # "a few seconds", and reported when over 1 s
        assert report["expected_ms"] - report["duration_ms"] <= gap_ms + 2000


async def test_sigterm_hands_a_two_reader_source_over_before_it_stops_without_a_gap(
    service_env, tmp_path, db, hls_source
):
    """Make-before-break: live HLS serves any number of readers, so the draining recorder gives
    the job up and hints the peer while its own FFmpeg still records, and stops only once the
    peer's run reports progress. The session has no gap; the join removes the overlap."""
    async with stack_on(service_env, tmp_path) as stack:
        first = await stack.start_recorder(REELHOUSE_RECONCILE_S="60")
        await nodes_running(db, 1)
        body = job_body(hls_source.url, input_type="INPUT_TYPE_HLS_URL")
        job_id = (await stack.ok("create", body))["id"]
        await running_on(stack, job_id, "recorder-1")
        await wait_recorded(stack, job_id, 4.0)
        second = await stack.start_recorder(REELHOUSE_RECONCILE_S="60")
        await nodes_running(db, 2)
        await heartbeating(service_env, "recorder-2")
        first.proc.send_signal(signal.SIGTERM)
        await running_on(stack, job_id, "recorder-2", timeout=25)
        assert await first.wait(timeout=30) == 0
        assert '"recording_handed_over"' in first.output()
        # Make before break: recorder-2's part was open before recorder-1 closed its own.
        opened = log_time(second.output(), "file_opened")
        closed = log_time(first.output(), "file_closed")
        assert opened < closed, (opened, closed)
        await wait_recorded(stack, job_id, (await out_time_s(stack, job_id)) + 3.0)
        (joined,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
        assert joined["status"] == "ready"
        report = (await db[Collections.FILES].find_one({"entity_id": job_id}))["integrity"]
        assert report["parts"] == 2
        assert report["gaps"] == [], report["gaps"]
        # An overlap the parts' media show on the wall clock is skipped (listed with what was
        # removed); the joined media covers the span once, within a segment of the live HLS
        # source, not the overlap twice.
        assert all(o["removed"] and o["after_part"] == 1 for o in report["overlaps"])
        assert report["duration_ms"] <= report["expected_ms"] + 2500, report


def log_time(output: str, event: str) -> str:
    """The timestamp of the first JSON log line of ``event`` in a service's output."""
    for line in output.splitlines():
        if f'"event": "{event}"' in line:
            return json.loads(line)["timestamp"]
    raise AssertionError(f"no {event} in the log")


# -- no split brain ---------------------------------------------------------------------------


async def test_a_node_cut_off_from_nats_is_taken_over_and_stops_its_copy_when_back(
    service_env, tmp_path, db, hls_source, infra
):
    """docs/ARCHITECTURE.md §2, "prefer overlap to loss": recorder-1 loses NATS (a real TCP proxy
    drops its connection) while recorder-2 keeps it. recorder-1 cannot tell that from a NATS
    outage, so it records on; its heartbeat key expires and recorder-2 takes the job over by
    compare-and-set. When recorder-1 sees the bucket again it stops its copy at once, and the
    recording keeps both parts (the overlap shows in the integrity report): no media is lost.
    The source is live HLS, which admits two readers at once (an SRT listener admits one)."""
    host, port = infra.nats_url.removeprefix("nats://").split(":")
    async with TcpProxy(host, int(port)) as proxy, stack_on(service_env, tmp_path) as stack:
        first = await stack.start_recorder(
            REELHOUSE_NATS_URL=f"nats://127.0.0.1:{proxy.port}", REELHOUSE_RECONCILE_S="60"
        )
        await nodes_running(db, 1)
        body = job_body(hls_source.url, input_type="INPUT_TYPE_HLS_URL")
        job_id = (await stack.ok("create", body))["id"]
        await running_on(stack, job_id, "recorder-1")
        await wait_recorded(stack, job_id, 3.0)
        pid1 = one_ffmpeg(first.pid)
        second = await stack.start_recorder(REELHOUSE_RECONCILE_S="60")
        await nodes_running(db, 2)

        proxy.cut()
        await running_on(stack, job_id, "recorder-2", timeout=30)
        taken = time.monotonic()
        assert alive(pid1), "a node cut off from NATS keeps recording (overlap, not loss)"
        assert ffmpeg_children(second.pid)
        proxy.restore()
        reconnected_by = time.monotonic()
        await eventually(lambda: not alive(pid1), timeout=15, what="recorder-1 to stop its copy")
        stopped = time.monotonic()
        log = first.output()
        assert '"recording_taken_over"' in log
        assert '"nats_reconnected"' in log
        # It stopped because it saw the new owner once reconnected (not at the cut).
        assert stopped > reconnected_by
        assert taken < reconnected_by
        await wait_recorded(stack, job_id, (await out_time_s(stack, job_id)) + 2.0)
        (final,) = (await stop_and_wait(stack, job_id))["recordedFiles"]
        assert final["status"] == "ready"
        stored = await db[Collections.FILES].find_one({"entity_id": job_id})
        assert stored["integrity"]["parts"] >= 2
        assert (await runtime_of(stack, job_id)) == {}


# -- outages ----------------------------------------------------------------------------------


async def test_nats_down_20_s_leaves_ffmpeg_alone_and_everything_resumes(
    service_env, tmp_path, db, srt_source, media_source_factory
):
    """nats-server stopped for 20 s (longer than the heartbeat TTL: every node key expires at
    once when it comes back) and restarted: no FFmpeg restarts, no handovers, the watchers
    resume, getStat numbers flow again, and a job created meanwhile is claimed by the reconcile
    pass once the live plane is back."""
    nats = local.nats_server(tmp_path / "own-nats")
    nats.start()
    try:
        url = f"nats://127.0.0.1:{nats.port}"
        async with stack_on(service_env, tmp_path, REELHOUSE_NATS_URL=url) as stack:
            recorder = await stack.start_recorder(REELHOUSE_RECONCILE_S="2")
            other_node = await stack.start_recorder(REELHOUSE_RECONCILE_S="2")
            await nodes_running(db, 2)
            job_a = (await stack.ok("create", job_body(srt_source.url)))["id"]
            await wait_recorded(stack, job_a, 2.0)
            owner = (await runtime_of(stack, job_a))["node"]
            owner_proc = recorder if owner == "recorder-1" else other_node
            pid = one_ffmpeg(owner_proc.pid)
            other = await media_source_factory("srt")

            nats.stop()
            down_at = time.monotonic()
            # Created while NATS is down: no hint, and no claim without the live plane.
            job_b = (await stack.ok("create", job_body(other.url, 0)))["id"]
            await asyncio.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # the outage: 20 s
            assert alive(pid)
            nats.start()

            async def stats_again() -> bool:
                return await out_time_s(stack, job_a) > 22.0  # live numbers flow again

            await eventually(stats_again, timeout=30, what="getStat of job A after NATS is back")
            await eventually(lambda: _running_somewhere(stack, job_b), timeout=30,
                             what="job B claimed once the live plane is back")  # fmt: skip
            # The same FFmpeg, the same owner: nobody took job A over, nothing restarted.
            assert one_ffmpeg_of(owner_proc.pid, pid)
            assert (await runtime_of(stack, job_a))["node"] == owner
            for proc in (recorder, other_node):
                assert '"recording_taken_over_from"' not in proc.output()
                assert '"live_plane_synced"' in proc.output()
            starts = [line for line in owner_proc.output().splitlines()
                      if '"ffmpeg_started"' in line and job_a in line]  # fmt: skip
            assert len(starts) == 1, starts
            async with Events(url, stack.env["REELHOUSE_SUBJECT_PREFIX"]) as ev:
                await stop_and_wait(stack, job_b)
                await eventually(lambda: "job_stopped" in ev.types(job_b), timeout=15,
                                 what="events after NATS is back")  # fmt: skip
            await stop_and_wait(stack, job_a)
    finally:
        nats.stop()


async def _running_somewhere(stack: Stack, job_id: str) -> bool:
    return (await runtime_of(stack, job_id)).get("state") == "running"


def one_ffmpeg_of(ppid: int, pid: int) -> bool:
    return pid in [p for p, s in ffmpeg_children(ppid) if s != "Z"]


async def test_mongodb_down_20_s_jobs_run_on_api_says_503_and_recovers(
    service_env, tmp_path, srt_source
):
    ferret = local.ferretdb(tmp_path / "own-ferretdb")
    ferret.start()
    client: AsyncMongoClient = AsyncMongoClient(
        f"mongodb://127.0.0.1:{ferret.port}/", serverSelectionTimeoutMS=3000, tz_aware=True
    )
    own_db = client[service_env["REELHOUSE_MONGODB_DATABASE"]]
    try:
        env = {"REELHOUSE_MONGODB_URL": f"mongodb://127.0.0.1:{ferret.port}/"}
        async with stack_on(service_env, tmp_path, **env) as stack:
            first = await stack.start_recorder()
            await nodes_running(own_db, 1)
            job_id = (await stack.ok("create", job_body(srt_source.url)))["id"]
            await running_on(stack, job_id, "recorder-1")
            second = await stack.start_recorder()
            await nodes_running(own_db, 2)
            await wait_recorded(stack, job_id, 2.0)
            pid = one_ffmpeg(first.pid)

            ferret.stop()
            down_at = time.monotonic()
            asked = time.monotonic()
            r = await stack.call("getAll", {})
            assert r.status_code == 503, r.text  # not a hang, not a 500
            assert r.json()["error"]["code"] == "UNAVAILABLE"
            assert time.monotonic() - asked < 10
            stat = await stack.call("getStat", {})  # live stats need no database
            assert stat.status_code == 200
            assert [row["processData"]["id"] for row in stat.json()] == [job_id]
            nodes = await stack.client.post("/api/nodes/getAll", json={}, headers=HEADERS)
            assert nodes.status_code == 200, nodes.text  # nor does the fleet view
            listed = {n["node_id"]: n for n in nodes.json() if n["alive"]}
            assert {"recorder-1", "recorder-2"} <= set(listed)
            assert [j["id"] for j in listed["recorder-1"]["jobs"]] == [job_id]
            await asyncio.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # the outage: 20 s
            assert alive(pid)
            ferret.start()

            async def api_back() -> bool:
                return (await stack.call("getAll", {})).status_code == 200

            await eventually(api_back, timeout=30, what="the API to answer again")
            before = await out_time_s(stack, job_id)
            await wait_recorded(stack, job_id, before + 3.0)
            # The same FFmpeg, still owned by recorder-1: nobody fenced, nobody took over.
            assert alive(pid)
            assert (await runtime_of(stack, job_id))["node"] == "recorder-1"
            assert [p for p, s in ffmpeg_children(second.pid) if s != "Z"] == []
            await stop_and_wait(stack, job_id)
    finally:
        await client.close()
        ferret.stop()


# -- bad sources ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (live ones, and reaped ones via cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int, with_reaped: bool) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total = int(fields[11]) + int(fields[12])  # utime, stime
        if with_reaped:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
        return total / tick

    return own(pid, True) + sum(own(p, False) for p, _ in ffmpeg_children(pid))


async def test_garbage_and_stalled_sources_go_retrying_with_a_reason_without_spinning(
    service_env, tmp_path, db, media_source_factory
):
    garbage_port = free_port("udp")
    stop_flood = asyncio.Event()

    async def flood() -> None:  # random bytes, 1316-byte datagrams, ~4 Mbit/s
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", garbage_port)
        )
        try:
            while not stop_flood.is_set():
                for _ in range(40):
                    transport.sendto(os.urandom(1316))
                await asyncio.sleep(0.1)
        finally:
            transport.close()

    flooder = asyncio.create_task(flood())
    stalled = await media_source_factory("srt")
    async with stack_on(service_env, tmp_path) as stack:
        recorder = await stack.start_recorder()
        await nodes_running(db, 1)
        udp = job_body(f"udp://127.0.0.1:{garbage_port}", input_type="INPUT_TYPE_UDP_URL")
        garbage_job = (await stack.ok("create", udp))["id"]
        stall_job = (await stack.ok("create", job_body(stalled.url, 0)))["id"]
        await wait_recorded(stack, stall_job, 2.0)
        os.kill(stalled.pid, signal.SIGSTOP)  # connected, then silent: no data, no close
        try:
            for job_id in (garbage_job, stall_job):

                async def retrying(j: str = job_id) -> dict[str, Any] | None:
                    rt = await runtime_of(stack, j)
                    return rt if rt.get("state") == "retrying" and rt.get("last_error") else None

                rt = await eventually(retrying, timeout=40, what="retrying with a reason")
                assert rt["last_error"].strip()
            # Neither spins: the recorder and its FFmpegs use well under half a core meanwhile.
            used = cpu_seconds(recorder.pid)
            began = time.monotonic()
            await asyncio.sleep(6)  # the window measured
            share = (cpu_seconds(recorder.pid) - used) / (time.monotonic() - began)
            assert share < 0.5, share
            for job_id in (garbage_job, stall_job):
                assert (await runtime_of(stack, job_id)).get("state") in ("retrying", "starting")
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
            stop_flood.set()
            await flooder
        for job_id in (garbage_job, stall_job):
            await stop_and_wait(stack, job_id)


# -- churn ------------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_200_jobs_created_and_removed_under_reads_leave_nothing_behind(
    service_env, tmp_path, db
):
    async with stack_on(service_env, tmp_path) as stack:
        recorder = await stack.start_recorder(REELHOUSE_STOP_GRACE_S="2")
        await nodes_running(db, 1)
        statuses: list[int] = []
        fds: list[tuple[int, int]] = []  # (test process incl. the API, recorder) after each round
        done = asyncio.Event()

        async def readers() -> None:
            while not done.is_set():
                for method in ("getStat", "getAll", "getCount"):
                    statuses.append((await stack.call(method, {})).status_code)

        reading = asyncio.create_task(readers())
        try:
            for _round in range(10):
                ports = [free_port("udp") for _ in range(20)]
                bodies = [
                    job_body(f"udp://127.0.0.1:{p}", input_type="INPUT_TYPE_UDP_URL") for p in ports
                ]
                created = await asyncio.gather(*(stack.ok("create", b) for b in bodies))
                ids = [c["id"] for c in created]

                async def some_claimed(ids: list[str] = ids) -> bool:
                    query = {"runtime.node": "recorder-1"}
                    return await db[Collections.RECORDINGS].count_documents(query) >= 10

                await eventually(some_claimed, timeout=30, what="jobs claimed")
                await asyncio.gather(*(stack.ok("remove", {"id": i}, verb="DELETE") for i in ids))
                await eventually(lambda: ffmpeg_children(recorder.pid) == [], timeout=30,
                                 what="no FFmpeg left")  # fmt: skip
                fds.append((fd_count(os.getpid()), fd_count(recorder.pid)))
        finally:
            done.set()
            await reading
        assert statuses
        assert all(code == 200 for code in statuses), sorted(set(statuses))

        for name in (Collections.RECORDINGS, Collections.INPUTS, Collections.FILES):
            assert await db[name].count_documents({}) == 0, name
        # Connection pools grow under load (a few steps) and then stay; a leak of even one
        # descriptor per job would add 20 per round: over the last five rounds (100 jobs) it
        # would be 100, over all 200 jobs 200.
        print("descriptors after each round (test process, recorder):", fds)
        half = fds[len(fds) // 2 - 1]
        for side in (0, 1):
            assert fds[-1][side] - half[side] <= 10, fds
            assert fds[-1][side] - fds[0][side] <= 30, fds
        assert "Traceback" not in recorder.output()
