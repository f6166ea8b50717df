"""Entry point of the API service: settings → app → uvicorn (which handles SIGTERM)."""

import uvicorn

from reelhouse.api.app import create_app
from reelhouse.api.settings import ApiSettings
from reelhouse.common.logging import configure_logging
from reelhouse.common.settings import load_settings


def main() -> None:
    settings = load_settings(ApiSettings, program="reelhouse-api")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="api")
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise SystemExit(f"reelhouse-api: {exc}") from None
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
