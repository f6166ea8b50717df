"""Running Reelhouse services for tests: as real subprocesses, or the API app in-process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic_settings import BaseSettings

from reelhouse.common.settings import ENV_PREFIX

S = TypeVar("S", bound=BaseSettings)


def settings_from_env(cls: type[S], env: dict[str, str], **overrides: object) -> S:
    """Build ``cls`` from ``REELHOUSE_*`` variables in ``env`` (not from os.environ)."""
    values: dict[str, object] = {
        k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)
    }
    values = {k: v for k, v in values.items() if k in cls.model_fields}
    return cls(**{**values, **overrides})


class ServiceProcess:
    """``python -m reelhouse.<service>`` as a subprocess, output captured to a file."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path) -> None:
        self.service = service
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"reelhouse.{self.service}",
                env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit by itself; returns the exit status."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.asynccontextmanager
async def running_service(
    service: str, env: dict[str, str], tmp: Path
) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess(service, env, tmp / f"{service}.log")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


@contextlib.asynccontextmanager
async def api_client(settings: BaseSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app in-process (lifespan run for real) behind an httpx client."""
    from reelhouse.api.app import create_app
    from support.seeds import seed_servers

    app = create_app(settings)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        await seed_servers(app.state.reelhouse.db)  # the Streams seed's rows sit on them
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
