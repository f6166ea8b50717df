"""datarhei Core, the peer in ``recording_density.py`` (variant ``datarhei``): a Go control plane
running one FFmpeg per process, like Reelhouse's recorder.

* :func:`core_binary` builds ``github.com/datarhei/core/v16`` at the version pinned in
  ``bench/peers/datarhei-core/go.mod`` once per machine, on demand (needs Go; about 1.5 min and a
  46 MB binary), and caches it as ``${XDG_CACHE_HOME:-~/.cache}/reelhouse/datarhei-core-<hash>``,
  named by a hash of that module's go.mod, go.sum and *.go, as ``scripts/bootstrap.sh`` does for
  nats-server and FerretDB. ``go install …@v16.16.0`` is refused here (the module proxy answers
  403 to its version list), but requiring the version in a go.mod and ``go build`` work.
* :class:`Core` runs it on loopback with everything a recording does not need switched off (see
  :data:`CORE_ENV`), creates processes through its REST API v3 (``POST /api/v3/process``), polls
  their state and stops them (``PUT /api/v3/process/<id>/command``).

Core starts its FFmpeg itself. So that they, too, die with this script, ``CORE_FFMPEG_BINARY`` is
a two-line wrapper that execs ``setpriv --pdeathsig KILL -- ffmpeg`` (the pid and /proc comm stay
FFmpeg's): Core dies with this script (PDEATHSIG), its FFmpeg die with Core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _common import (
    CACHE_DIR,
    FFMPEG,
    PDEATH,
    ROOT,
    Tracked,
    _mean,
    children,
    cmdline,
    proc_stat,
    reap,
    say,
    spawn,
    tail,
    wait_for,
)
from support import infra

CORE_SRC = ROOT / "bench" / "peers" / "datarhei-core"
CORE_PACKAGE = "github.com/datarhei/core/v16"
CORE_VERSION = "v16.16.0"  # the pin in CORE_SRC/go.mod (checked by core_binary)

# Everything set for the benchmark; the rest is Core's default. Auth is off (loopback only), and
# what a stream-copy recording to disk does not use is off: RTMP and SRT servers, TLS, the
# session collector, historic metrics and Prometheus, the disk cache of the HTTP file server
# (nothing reads the files over HTTP), the public IP lookup and the update check (no internet).
CORE_ENV = {
    "CORE_API_AUTH_ENABLE": "false",
    "CORE_RTMP_ENABLE": "false",
    "CORE_SRT_ENABLE": "false",
    "CORE_TLS_ENABLE": "false",
    "CORE_SESSIONS_ENABLE": "false",
    "CORE_METRICS_ENABLE": "false",
    "CORE_METRICS_ENABLE_PROMETHEUS": "false",
    "CORE_STORAGE_DISK_CACHE_ENABLE": "false",
    "CORE_HOST_AUTO": "false",
    "CORE_UPDATE_CHECK": "false",
    "CORE_PLAYOUT_ENABLE": "false",
    "CORE_STORAGE_MIMETYPES_FILE": "",  # its default ./mime.types is not there; not served
}


def _cache_root() -> Path:
    return CACHE_DIR.parent  # ${XDG_CACHE_HOME:-~/.cache}/reelhouse, as scripts/bootstrap.sh


def core_binary(src: Path = CORE_SRC) -> Path:
    """The cached Core binary, built first if this machine has none for these pins."""
    pin = f"{CORE_PACKAGE} {CORE_VERSION}"
    if pin not in (src / "go.mod").read_text():
        raise RuntimeError(f"{src}/go.mod does not require {pin}; update CORE_VERSION")
    files = [src / "go.mod", src / "go.sum", *sorted(src.glob("*.go"))]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    binary = _cache_root() / f"datarhei-core-{digest}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"Go is needed once to build datarhei Core ({src}); install Go")
    say(f"building datarhei Core {CORE_VERSION} from {src} (once per machine; a few minutes)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.tmp.{os.getpid()}")
    env = {**os.environ, "CGO_ENABLED": "0"}
    try:
        subprocess.run(
            [*PDEATH, go, "build", "-trimpath", "-o", str(tmp), CORE_PACKAGE],
            cwd=src, env=env, check=True, timeout=1800,
        )  # fmt: skip
        tmp.rename(binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


class CoreApi:
    """Core's REST API v3 on loopback (auth off)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.latencies: list[float] = []  # of the state polls (``states``)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read() or b"null")

    def about(self) -> dict[str, Any] | None:
        try:
            return self.call("GET", "/api", timeout=5)
        except (OSError, urllib.error.HTTPError, ValueError):
            return None

    def states(self) -> dict[str, dict[str, Any]]:
        """Every process's state (``GET /api/v3/process?filter=state``) by id: the one call a
        dashboard of Core makes to show all of them, as ``getStat`` is Reelhouse's."""
        t0 = time.monotonic()
        rows = self.call("GET", "/api/v3/process?filter=state")
        self.latencies.append(time.monotonic() - t0)
        return {r["id"]: r.get("state") or {} for r in rows}


class Core:
    """One datarhei Core for ``jobs`` recordings; the measurement of its process and the stop of
    its processes (the same metrics as the engine's: ``stop_calls_s``, ``stop_all_s``)."""

    def __init__(self, work: Path, jobs: int) -> None:
        self.work, self.jobs = work, jobs
        self.storage = work / "storage"
        self.log = work / "core.log"
        self.proc: subprocess.Popen | None = None
        self.api: CoreApi | None = None
        self.job_ids: list[str] = []
        self.version: str | None = None
        self.binary: Path | None = None

    def _ffmpeg_wrapper(self) -> Path:
        """``CORE_FFMPEG_BINARY``: FFmpeg with PDEATHSIG=KILL (exec'd, so the pid is FFmpeg's)."""
        wrapper = self.work / "ffmpeg"
        prefix = " ".join(shlex.quote(x) for x in PDEATH)
        wrapper.write_text(f'#!/bin/sh\nexec {prefix} {shlex.quote(FFMPEG)} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def start(self) -> CoreApi:
        self.binary = core_binary()
        for d in (self.storage, self.work / "db", self.work / "cwd"):
            d.mkdir(parents=True, exist_ok=True)
        port = infra.free_port()
        env = {
            **os.environ,
            **CORE_ENV,
            "CORE_ADDRESS": f"127.0.0.1:{port}",
            "CORE_CONFIGFILE": str(self.work / "config.json"),
            "CORE_DB_DIR": str(self.work / "db"),
            "CORE_STORAGE_DISK_DIR": str(self.storage),
            "CORE_FFMPEG_BINARY": str(self._ffmpeg_wrapper()),
        }
        say(f"datarhei: starting Core ({self.binary.name})")
        # cwd: Core reads a .env file from its working directory (godotenv/autoload).
        self.proc = spawn([str(self.binary)], self.log, env, cwd=self.work / "cwd")
        api = self.api = CoreApi(port)

        def up() -> dict[str, Any] | None:
            self.check()
            return api.about()

        about = wait_for(up, timeout=60, what="datarhei Core's GET /api", interval=0.5)
        self.version = (about.get("version") or {}).get("number")
        return api

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            raise RuntimeError(f"Core exited rc={rc}; log tail:\n{tail(self.log)}")

    def create(self, job_id: str, url: str, codecs: list[str]) -> None:
        """One recording of ``url`` into ``<storage>/<job_id>.mp4``: the bare variant's FFmpeg
        options (stream copy, fragmented mp4), started at once, restarted 1 s after a failure."""
        assert self.api is not None
        body = {
            "id": job_id,
            "type": "ffmpeg",
            # Core follows FFmpeg's default progress lines on stderr (info level, -stats).
            "options": ["-loglevel", "info", "-nostdin", "-y"],
            "input": [{"id": "in", "address": url, "options": []}],
            "output": [{
                "id": "out", "address": f"{{diskfs}}/{job_id}.mp4",
                "options": [*codecs, "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov"],
            }],
            "reconnect": True,
            "reconnect_delay_seconds": 1,
            "autostart": True,
            "stale_timeout_seconds": 30,
        }  # fmt: skip
        self.api.call("POST", "/api/v3/process", body)
        self.job_ids.append(job_id)

    def ffmpeg(self) -> list[int]:
        return children(self.proc.pid, "ffmpeg") if self.proc is not None else []

    def track(self) -> tuple[list[int], list[Tracked]]:
        """Start of the window: Core's FFmpeg children, and Core itself (as the "engine" role, so
        that its numbers land in the same ``engine_*`` metrics as Reelhouse's services)."""
        assert self.proc is not None
        self._workers = self.ffmpeg()
        self._others = [p for p in children(self.proc.pid) if p not in self._workers]
        if self.api is not None:
            self.api.latencies.clear()
        return self._workers, [Tracked("engine", "core", self.proc.pid)]

    def window_metrics(self) -> dict[str, Any]:
        lat = self.api.latencies if self.api is not None else []
        workers = self._workers
        return {
            "getstat_ms_mean": _mean([x * 1000 for x in lat]),
            "getstat_ms_max": max(lat) * 1000 if lat else None,
            "workers_replaced": len(set(workers) ^ set(self.ffmpeg())),
            "engine_children_not_ffmpeg": (
                {"core": [(p, (proc_stat(p) or ("?",))[0]) for p in self._others]}
                if self._others else {}
            ),
            "command": " ".join(cmdline(workers[0])) if workers else None,
            "peer": f"datarhei Core {self.version} ({self.binary})",
        }  # fmt: skip

    def stop_jobs(self, m: dict[str, Any]) -> None:
        """``stop`` command for every process; time until no FFmpeg child of Core remains."""
        api, proc = self.api, self.proc
        if api is None or proc is None or proc.poll() is not None or not self.job_ids:
            return
        say("datarhei: stopping the processes")
        t0 = time.monotonic()
        for j in self.job_ids:
            with contextlib.suppress(OSError, urllib.error.HTTPError):
                api.call("PUT", f"/api/v3/process/{j}/command", {"command": "stop"})
        m["stop_calls_s"] = time.monotonic() - t0
        try:
            wait_for(lambda: not self.ffmpeg(), timeout=60, what="Core's ffmpeg to end",
                     interval=0.5)  # fmt: skip
            m["stop_all_s"] = time.monotonic() - t0
        except TimeoutError:
            m["stop_all_s"] = None
            m["stop_problem"] = f"{len(self.ffmpeg())} ffmpeg still running 60 s after the stops"
            say(f"datarhei: {m['stop_problem']}")

    def teardown(self) -> None:
        """SIGINT (Core shuts down cleanly on SIGINT only: it stops its FFmpeg first), then
        SIGKILL after 25 s; any FFmpeg left dies with it (PDEATHSIG)."""
        if self.proc is None:
            return
        say("datarhei: tearing down")
        reap([self.proc], signal.SIGINT, grace=25)
