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

import httpx
import pytest
from support.infra import ROOT, free_port
from support.wait import eventually

pytestmark = pytest.mark.slow

SERVICES = {"api", "recorder", "restreamer", "prober", "janitor"}


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


def _stack_env(data: Path, api_port: int, **extra: str) -> dict[str, str]:
    # As a user would type it: none of the suite's REELHOUSE_* settings, and no outer make's
    # flags (`make test` runs this suite).
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOUSE_") and k not in outer}
    env.update(
        UP_DATA_DIR=str(data), API_PORT=str(api_port), NATS_PORT=str(free_port()),
        DB_PORT=str(free_port()), REELHOUSE_NODE_HEARTBEAT_S="1", **extra,
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
    data = tmp_path / "stack-data"
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

            async def five_services():
                r = await client.post("/api/nodes/getAll", headers={"x-access-token": token})
                alive = {n["service"] for n in r.json() if n["alive"]}
                return alive if len(alive) == 5 else None

            alive = await eventually(five_services, timeout=30, what="five services alive")
            assert alive == SERVICES
        # Every line of every process is prefixed with the process name.
        text = (tmp_path / "up.log").read_text(errors="replace")
        for name in ("nats.1", "api.1", "recorder.1", "restreamer.1", "prober.1", "janitor.1"):
            assert _prefixed(text, name), name
        assert any("Server is ready" in line for line in _prefixed(text, "nats.1"))
        assert "written at first start" in text  # the token line tells the truth: no variable
        assert _processes_mentioning(str(data))
    finally:
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
    data = tmp_path / "stack-data"
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
