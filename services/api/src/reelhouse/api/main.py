"""Entry point of the API service: settings → app → uvicorn; SIGTERM drains and exits 0."""

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator

import uvicorn

from reelhouse.api.app import create_app
from reelhouse.api.settings import ApiSettings
from reelhouse.common.bus import exit_if_incompatible
from reelhouse.common.logging import configure_logging
from reelhouse.common.settings import load_settings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after its graceful shutdown, so the process would end
        # "killed by SIGTERM"; Reelhouse services report a clean stop with exit status 0.
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


def main() -> None:
    settings = load_settings(ApiSettings, program="reelhouse-api")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="api")
    try:
        app = create_app(settings)
    except ValueError as exc:  # a setting's value the model could not check (e.g. token length)
        print(f"reelhouse-api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # as load_settings: a bad setting exits 2
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        # Forwarded headers: only from REELHOUSE_TRUSTED_PROXIES, through the same uvicorn
        # ProxyHeadersMiddleware that create_app() adds. uvicorn's own default would trust
        # 127.0.0.1 (or $FORWARDED_ALLOW_IPS), which let any local client pick its address.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    asyncio.run(_Server(config).serve())
    exit_if_incompatible()
