"""Structured logging with structlog: facts with fields.

``configure_logging()`` is called once from a service's ``main()``. Lines are JSON when stderr is
not a terminal (or ``log_format="json"``) and human-readable on a terminal. Bind context once per
message or request with ``structlog.contextvars.bind_contextvars`` or ``log.bind``.
"""

from __future__ import annotations

import logging
import sys

import structlog

from reelhouse.common.settings import LogFormat, LogLevel

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(*, level: LogLevel = "info", fmt: LogFormat = "auto", **context: str) -> None:
    """Configure structlog (and stdlib logging, for libraries) for this process."""
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if json_out:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, nats, pymongo) log through stdlib: keep them at warning and above.
    logging.basicConfig(
        level=max(_LEVELS[level], logging.WARNING),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; ``name`` becomes the ``component`` field."""
    # Initial values go through get_logger() so the proxy stays lazy: a module-level logger made
    # before configure_logging() still renders with the configuration in force when it logs.
    return structlog.get_logger(component=name) if name else structlog.get_logger()
