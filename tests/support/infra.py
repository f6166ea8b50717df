"""Real infrastructure for tests: nats-server and the MongoDB-compatible server as processes.

Each server runs on a free loopback port with its data in a temporary directory, and can be
stopped and started again on the same port (tests of outages do exactly that).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.0/8,::1/128"
"""The URL policy's allow-list for local sources (REELHOUSE_PROBE_ALLOW_NETWORKS), as `make up`."""
T = TypeVar("T")


def free_port(kind: Literal["tcp", "udp"] = "tcp", host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (bind to port 0, read it back, release it)."""
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval=0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def built_binary(env: str, name: str, hint: str) -> str:
    """A binary `make install` builds into .cache/bin (``$<env>`` names another); ``hint``
    completes the error when it is missing."""
    configured = os.environ.get(env)
    path = Path(configured) if configured else ROOT / ".cache/bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} not found: {hint}")
    return str(path)


def nats_server_binary() -> str:
    """The pinned nats-server that `make test` builds (tools/nats-server), never one on PATH."""
    return built_binary("REELHOUSE_NATS_SERVER_BIN", "nats-server",
                        "run `make test` (it builds the pinned nats-server)")  # fmt: skip


def ferretdb_binary() -> str:
    return built_binary("REELHOUSE_FERRETDB_BIN", "ferretdb-lite",
                        "run `make test` (it builds the FerretDB helper)")  # fmt: skip


class ServerProcess:
    """A server process on a fixed port that can be stopped and restarted."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(
                lambda: port_open(self.port) or self.proc.poll() is not None,
                timeout=timeout,
                what=f"{self.name} on port {self.port}",
            )
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_until(lambda: not port_open(self.port), timeout=10, what=f"{self.name} to close")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def nats_server(tmp: Path, port: int | None = None) -> ServerProcess:
    """nats-server with JetStream, data under ``tmp``."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp)]
    return ServerProcess("nats-server", argv, port, tmp / "nats.log")


def ferretdb(tmp: Path, port: int | None = None) -> ServerProcess:
    """FerretDB through the ferretdb-lite helper (its log under ``tmp``), on its default backend:
    a private PostgreSQL cluster, or SQLite with ``REELHOUSE_FERRETDB_BACKEND=sqlite``.

    The data lives in a directory of its own under /tmp, removed when this process exits:
    PostgreSQL runs as its own user (it refuses root), who cannot enter pytest's 0700 temporary
    directories. It survives a stop and start of the server (the outage tests do that).
    """
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="reelhouse-db-", dir="/tmp"))
    data.chmod(0o755)
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    argv = [ferretdb_binary(), "-listen", f"127.0.0.1:{port}", "-data", str(data),
            "-log-level", "error"]  # fmt: skip
    if backend := os.environ.get("REELHOUSE_FERRETDB_BACKEND"):
        argv += ["-backend", backend]
    if stats := os.environ.get("REELHOUSE_FERRETDB_STATS"):  # e.g. 30s: cost per command kind
        argv += ["-stats", stats]
    return ServerProcess("ferretdb", argv, port, tmp / "ferretdb.log")


def settings_env(nats_url: str, mongodb_url: str, tmp: Path, test_id: str) -> dict[str, str]:
    """``REELHOUSE_*`` variables that point a service at a test's infrastructure: its own
    database ``t_<id>`` and subject prefix ``t<id>``, its files under ``tmp``."""
    return {
        "REELHOUSE_NATS_URL": nats_url,
        "REELHOUSE_MONGODB_URL": mongodb_url,
        "REELHOUSE_MONGODB_DATABASE": f"t_{test_id}",
        "REELHOUSE_SUBJECT_PREFIX": f"t{test_id}",
        "REELHOUSE_STORAGE_ROOT": str(tmp / "recordings"),
        "REELHOUSE_BOOTSTRAP_TOKEN_FILE": str(tmp / "bootstrap-token"),
        "REELHOUSE_LOG_FORMAT": "json",
        "REELHOUSE_NODE_HEARTBEAT_S": "0.5",
        "REELHOUSE_NATS_RECONNECT_WAIT_S": "0.2",
        # Test sources listen on 127.0.0.1, as under `make up`; the address policy's own tests
        # set it explicitly (tests/integration/test_ssrf.py).
        "REELHOUSE_PROBE_ALLOW_NETWORKS": LOOPBACK,
    }
