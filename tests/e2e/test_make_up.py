"""`make up` brings the whole stack up green, keeps it up through crashes, and takes it all down.

The stack runs under supervisord (scripts/up.sh): every process a child of it, named by it
(`SUPERVISOR_PROCESS_NAME` in the child's environment), restarted when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.infra import ROOT, free_port
from support.seeds import recording_payload
from support.wait import eventually

pytestmark = pytest.mark.slow

SERVICES = {"api", "recorder", "restreamer", "prober", "janitor", "ingest"}


def _processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            blob = (pid_dir / "cmdline").read_bytes() + (pid_dir / "environ").read_bytes()
            state = (pid_dir / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker.encode() in blob and state != "Z":
            found.append(f"{pid_dir.name}: {(pid_dir / 'cmdline').read_bytes()[:120]!r}")
    return found


def _supervised(supervisord: int) -> dict[str, int]:
    """Process name (``recorder.2``) -> pid of every live child of ``supervisord``."""
    children = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (pid_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if fields[0] == "Z" or int(fields[1]) != supervisord:
            continue
        for var in environ:
            if var.startswith(b"SUPERVISOR_PROCESS_NAME="):
                children[var.split(b"=", 1)[1].decode()] = int(pid_dir.name)
    return children


def _prefixed(log: str, name: str) -> list[str]:
    """The lines of ``make up``'s output that carry ``name``'s prefix (``07:00:01 api.1 | …``)."""
    return re.findall(rf"^\d\d:\d\d:\d\d {re.escape(name)} +\| (.*)$", log, flags=re.M)


def _reachable(path: Path) -> Path:
    """``path`` with every directory down to it traversable by others (pytest makes them 0700):
    run as root, the stack's database runs PostgreSQL as the `postgres` user, which must reach
    its data directory (else `make up` falls back to SQLite, and this suite would not run the
    default backend)."""
    for directory in [path, *path.parents]:
        if directory == Path(directory.anchor) or str(directory) in ("/tmp", "/var/tmp"):
            break
        directory.chmod(directory.stat().st_mode | 0o011)
    return path


def _stack_env(data: Path, api_port: int, **extra: str) -> dict[str, str]:
    # As a user would type it: none of the suite's REELHOUSE_* settings, and no outer make's
    # flags (`make test` runs this suite).
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOUSE_") and k not in outer}
    env.update(
        UP_DATA_DIR=str(data), API_PORT=str(api_port), NATS_PORT=str(free_port()),
        DB_PORT=str(free_port()),
        # The ingest fan-out and relay bind their ports at start: their own, as two stacks run
        # side by side.
        REELHOUSE_INGEST_FANOUT_PORT=str(free_port("udp")),
        REELHOUSE_INGEST_RELAY_PORT=str(free_port("udp")), **extra,
    )  # fmt: skip
    return env


async def _green(client: httpx.AsyncClient, timeout: float = 60) -> dict:
    async def health():
        r = await client.get("/api/health")
        return r.json() if r.status_code == 200 else None

    body = await eventually(health, timeout=timeout, what="/api/health 200", interval=0.2)
    assert all(c["status"] == "up" for c in body["checks"].values()), body
    return body


async def test_up_serves_health_and_stops_everything(tmp_path):
    data = _reachable(tmp_path) / "stack-data"
    api_port = free_port()
    log = (tmp_path / "up.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts/up.sh"), env=_stack_env(data, api_port), stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
            body = await _green(client)
            assert Path(body["checks"]["storage"]["path"]) == data / "recordings"

            token = (data / "bootstrap-token").read_text().strip()

            async def every_service():
                r = await client.post("/api/nodes/getAll", headers={"x-access-token": token})
                alive = {n["service"] for n in r.json() if n["alive"]}
                return alive if len(alive) == len(SERVICES) else None

            alive = await eventually(every_service, timeout=30, what="every service alive")
            assert alive == SERVICES
        # Every line of every process is prefixed with the process name.
        text = (tmp_path / "up.log").read_text(errors="replace")
        for name in (
            "nats.1",
            "api.1",
            "recorder.1",
            "restreamer.1",
            "prober.1",
            "janitor.1",
            "ingest.1",
        ):
            assert _prefixed(text, name), name
        assert any("Server is ready" in line for line in _prefixed(text, "nats.1"))
        assert "written at first start" in text  # the token line tells the truth: no variable
        assert _processes_mentioning(str(data))
        # POST /api/system/shutdown (issue 22) ends the stack: supervisord itself exits.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
            r = await client.post("/api/system/shutdown", headers={"x-access-token": token})
            assert r.status_code == 202, r.text
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        activity = (data / "run/supervisord.log").read_text()
        assert "received SIGTERM indicating exit request" in activity
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        log.close()
    leftovers = await eventually(
        lambda: not _processes_mentioning(str(data)) or None,
        timeout=10,
        what="no process of the stack left",
    )
    assert leftovers
    assert (data / "db").is_dir()
    assert (data / "nats").is_dir()


async def test_a_killed_process_comes_back_alone_and_ctrl_c_stops_all(tmp_path):
    """SIGKILL each kind of process of `make up RECORDERS=2`: it is back with a new pid within
    2 s and serving again, and every other process keeps its pid and keeps serving."""
    data = _reachable(tmp_path) / "stack-data"
    api_port = free_port()
    token = "a-token-from-the-environment-0123"  # issue 20 item 9: written to the file too
    env = _stack_env(data, api_port, RECORDERS="2", REELHOUSE_BOOTSTRAP_TOKEN=token)
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    # A session of its own, so that SIGINT to its process group is what Ctrl-C in a terminal is.
    proc = await asyncio.create_subprocess_exec(
        "make", "--no-print-directory", "up", cwd=ROOT, env=env, stdout=log,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    headers = {"x-access-token": token}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
            await _green(client, timeout=90)
            supervisord = int((data / "run/supervisord.pid").read_text())
            everyone = {"nats.1", "db.1", "api.1", "recorder.1", "recorder.2", "restreamer.1",
                        "prober.1", "janitor.1"}  # fmt: skip

            async def nodes() -> list[dict]:
                r = await client.post("/api/nodes/getAll", headers=headers)
                r.raise_for_status()
                return r.json()

            async def heartbeats_after(pids: Iterable[int], moment: float) -> bool:
                """Every one of ``pids`` has a live node row seen after ``moment`` (epoch s)."""
                seen = {
                    n["pid"]
                    for n in await nodes()
                    if n["alive"] and _epoch(n["last_seen"]) > moment
                }
                return set(pids) <= seen

            def all_children():
                children = _supervised(supervisord)
                return children if set(children) >= everyone else None

            before = await eventually(all_children, timeout=30, what="every process started")
            service_pids = {p for n, p in before.items() if n.split(".")[0] in SERVICES}
            started = time.time()
            await eventually(
                lambda: heartbeats_after(service_pids, started),
                timeout=30, what="six service nodes heartbeating",
            )  # fmt: skip

            # Item 9: the token given in the environment is in the file the start-up line names.
            token_file = data / "bootstrap-token"
            assert token_file.read_text().strip() == token
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            assert f"token in {token_file}" in log_path.read_text(errors="replace")

            current = before
            kill, term = signal.SIGKILL, signal.SIGTERM
            rounds = (
                {"api.1": kill, "recorder.2": kill, "prober.1": kill, "nats.1": kill},
                # SIGTERM: the prober drains, exits 0, and is started again too.
                {"restreamer.1": kill, "janitor.1": kill, "db.1": kill, "prober.1": term},
            )
            for victims in rounds:
                current = await _kill_and_watch(supervisord, current, victims)

                # The replacements serve: health is green again (the new api, reaching the new
                # nats-server or database), every service's node row heartbeats: the new ones
                # and those that were never touched.
                await _green(client, timeout=30)
                pids = [p for n, p in current.items() if n.split(".")[0] in SERVICES]
                moment = time.time()
                await eventually(
                    lambda pids=pids, moment=moment: heartbeats_after(pids, moment),
                    timeout=20, what=f"every service heartbeating after killing {victims}",
                )  # fmt: skip

        # Each life of a service is logged under the same name: one registration per start.
        text = log_path.read_text(errors="replace")
        for name in everyone - {"nats.1", "db.1"}:
            lives = 1 + sum(name in victims for victims in rounds)
            starts = [line for line in _prefixed(text, name) if '"node_registered"' in line]
            assert len(starts) == lives, (name, starts)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        await asyncio.wait_for(proc.wait(), 40)
        log.close()
    gone = await eventually(
        lambda: not _processes_mentioning(str(data)) or None,
        timeout=10,
        what="no process of the stack left after Ctrl-C",
    )
    assert gone
    # Every process was stopped by supervisord and exited by itself (drained), none killed.
    activity = (data / "run/supervisord.log").read_text()
    for name in everyone:
        assert re.search(rf"stopped: {re.escape(name)} \(exit status 0\)", activity), name


async def _kill_and_watch(
    supervisord: int, current: dict[str, int], victims: dict[str, signal.Signals]
) -> dict[str, int]:
    """Signal ``victims``; each is back with a new pid (within 2 s of a SIGKILL), the others
    keep theirs."""
    signalled_at = time.monotonic()
    for name, sig in victims.items():
        os.kill(current[name], sig)
    back: dict[str, float] = {}

    def replaced():
        children = _supervised(supervisord)
        for name in victims.keys() - back.keys():
            if children.get(name) not in (None, current[name]):
                back[name] = time.monotonic() - signalled_at
        return children if back.keys() == victims.keys() else None

    children = await eventually(replaced, timeout=20, what=f"{set(victims)} started again")
    slow = {
        name: round(s, 2) for name, s in back.items() if victims[name] == signal.SIGKILL and s > 2.0
    }
    assert not slow, f"restarted later than 2 s after SIGKILL: {slow}"
    for name, pid in current.items():
        if name in victims:
            assert children[name] != pid
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), name
        else:
            assert children.get(name) == pid, f"{name} was touched: {pid} -> {children.get(name)}"
    return children


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_a_recorder_killed_under_make_up_hands_its_jobs_over_and_comes_back_for_new_work(
    tmp_path, media_source_factory
):
    """Issue 19: `make up RECORDERS=2`, ten recordings; SIGKILL the recorder that runs the most
    of them. The survivor takes every one of its jobs over (their heartbeat key expires, the
    owner keys move by compare-and-set); supervisord starts the killed recorder again, and the
    new one, the least loaded node, takes its share of the next jobs."""
    data = _reachable(tmp_path) / "stack-data"
    api_port = free_port()
    env = _stack_env(data, api_port, RECORDERS="2")
    log = (tmp_path / "up.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "make", "--no-print-directory", "up", cwd=ROOT, env=env, stdout=log,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    sources = [await media_source_factory("srt", size="320x180", fps=10) for _ in range(14)]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
            await _green(client, timeout=90)
            headers = {"x-access-token": (data / "bootstrap-token").read_text().strip()}
            supervisord = int((data / "run/supervisord.pid").read_text())

            async def call(path: str, body: dict) -> Any:
                r = await client.post(f"/api/{path}", json=body, headers=headers)
                assert r.status_code == 200, r.text
                return r.json()

            async def recorders() -> dict[str, dict]:
                rows = await call("nodes/getAll", {"service": "recorder", "alive": True})
                return {row["node_id"]: row for row in rows}

            await eventually(lambda: _count(recorders(), 2), timeout=60, what="two recorders")

            async def create(source: Any) -> str:
                body = recording_payload(0, active=True)  # the seed's mp4 archive
                body["input"]["input_stream_url"] = source.url
                body["input"]["input_type"] = "INPUT_TYPE_SRT_URL"
                return (await call("recording/create", body))["id"]

            first = [await create(source) for source in sources[:10]]

            async def owners(ids: list[str]) -> dict[str, str] | None:
                """job id -> the node running it, once every one of ``ids`` runs."""
                out = {}
                for job_id in ids:
                    runtime = (await call("recording/getById", {"id": job_id}))["runtime"]
                    if not runtime or runtime.get("state") != "running":
                        return None
                    out[job_id] = runtime["node"]
                return out

            placed = await eventually(lambda: owners(first), timeout=120, what="ten jobs running")
            nodes = await recorders()
            by_node = {n: [j for j, o in placed.items() if o == n] for n in nodes}
            victim = max(by_node, key=lambda n: len(by_node[n]))
            survivor = next(n for n in nodes if n != victim)
            victim_pid = nodes[victim]["pid"]
            name = next(n for n, pid in _supervised(supervisord).items() if pid == victim_pid)
            assert name.startswith("recorder.")

            os.kill(victim_pid, signal.SIGKILL)

            async def all_on_survivor() -> bool:
                now = await owners(first)
                return now is not None and set(now.values()) == {survivor}

            await eventually(all_on_survivor, timeout=60, what="every job on the survivor")
            # supervisord started the killed recorder again: a new node, alive, running nothing.
            reborn = await eventually(
                lambda: _new_recorder(recorders(), {victim, survivor}),
                timeout=30, what="the killed recorder back as a new node",
            )  # fmt: skip
            assert _supervised(supervisord)[name] == reborn["pid"]
            assert reborn["jobs"] == []

            # The next jobs go to the least loaded node first: the new one takes its share.
            later = [await create(source) for source in sources[10:]]
            placed_later = await eventually(
                lambda: owners(later), timeout=120, what="four more jobs running"
            )
            assert sum(1 for o in placed_later.values() if o == reborn["node_id"]) >= 2
            for job_id in first + later:
                await call("recording/stop", {"id": job_id})
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        await asyncio.wait_for(proc.wait(), 60)
        log.close()


async def _count(rows: Any, n: int) -> bool:
    return len(await rows) >= n


async def _new_recorder(rows: Any, known: set[str]) -> dict | None:
    fresh = [row for node, row in (await rows).items() if node not in known]
    return fresh[0] if fresh else None
