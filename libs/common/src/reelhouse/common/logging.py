"""Structured logging with structlog: facts with fields.

``configure_logging()`` is called once from a service's ``main()``. Lines are JSON when stderr is
not a terminal (or ``log_format="json"``) and human-readable on a terminal. Bind context once per
message or request with ``structlog.contextvars.bind_contextvars`` or ``log.bind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from datetime import UTC, datetime
from typing import Any

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
        processors=[*shared, LOG_SHIPPER, renderer],
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


# -- log shipping (issue 7): warn+ records into the ``logs`` collection ---------------------------

LOGS_COLLECTION = "logs"
"""Where services ship their warning-and-above records (``/api/system/getLogs`` reads it)."""

LEVEL_NUMBERS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_SHIPPED_METHODS = {"warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
_RESERVED = {"event", "level", "timestamp", "service", "node", "component"}


def _json_safe(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth < 4 and isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:50]}
    if depth < 4 and isinstance(value, list | tuple | set):
        return [_json_safe(v, depth + 1) for v in list(value)[:50]]
    return str(value)[:2000]


class LogShipper:
    """A structlog processor that copies warning-and-above records into a bounded buffer.

    Logging never waits for the database: :func:`ship_logs` (a task of the service) drains the
    buffer into MongoDB in batches. When the buffer is full (database away or slow) the oldest
    records are dropped and counted in ``dropped``.
    """

    def __init__(self, maxlen: int = 2000) -> None:
        self.buffer: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.dropped = 0

    def __call__(
        self, logger: Any, method_name: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        level_no = _SHIPPED_METHODS.get(method_name)
        if level_no is None:
            return event_dict
        record = dict(event_dict)
        if record.get("exc_info"):
            with contextlib.suppress(Exception):
                record = structlog.processors.format_exc_info(logger, method_name, record)
        record.pop("exc_info", None)
        doc = {
            "ts": datetime.now(UTC),
            "level": "critical" if level_no >= 50 else "error" if level_no >= 40 else "warning",
            "level_no": level_no,
            "event": str(record.get("event", ""))[:500],
            "service": record.get("service"),
            "node": record.get("node"),
            "component": record.get("component"),
            "fields": _json_safe({k: v for k, v in record.items() if k not in _RESERVED}),
        }
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append(doc)
        return event_dict


LOG_SHIPPER = LogShipper()
"""The process's shipper; :func:`configure_logging` puts it in the processor chain."""


async def ship_logs(
    db: Any,
    stop: asyncio.Event,
    *,
    service: str,
    node: str,
    interval_s: float = 1.0,
    shipper: LogShipper = LOG_SHIPPER,
) -> None:
    """Write buffered warn+ records into ``logs`` every ``interval_s`` until ``stop`` (then a last
    flush). A failed write drops its batch (counted) rather than retrying into a growing backlog;
    it is not logged at warning, which would feed the buffer it failed to drain."""
    plain = logging.getLogger("reelhouse.logs")
    while True:
        stopping = stop.is_set()
        while shipper.buffer:
            batch = []
            while shipper.buffer and len(batch) < 500:
                doc = shipper.buffer.popleft()
                doc["service"] = doc.get("service") or service
                doc["node"] = doc.get("node") or node
                batch.append(doc)
            try:
                await asyncio.wait_for(db[LOGS_COLLECTION].insert_many(batch, ordered=False), 5)
            except Exception as exc:
                shipper.dropped += len(batch)
                plain.debug("log shipping failed: %s", exc)
                break
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
