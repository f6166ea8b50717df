"""Runtime settings: what operators change through ``/api/settings/update`` without a restart.

One document (``_id: "runtime"``) in the ``settings`` collection holds the values and a version.
The API writes it and publishes ``ConfigReloaded`` (``contracts.messages``) on
``<p>.evt.system.config_reloaded``; every service runs a :class:`RuntimeSettingsWatcher` that
reads the document at start, on that event and every ``refresh_s`` (a lost NATS message delays a
change, never loses it) and applies what it can to its own settings object in place, so code that
reads ``settings.max_jobs`` or ``settings.disk_state()`` sees the new value on its next look. A
value that is unset falls back to the process's environment setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pymongo.asynchronous.database import AsyncDatabase

from reelhouse.common.contracts.base import utcnow
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.runtime")

_RATE = re.compile(r"^\s*\d+\s*(?:/|per)\s*(?:\d+\s*)?(?:second|minute|hour|day)s?\s*$", re.I)
"""The ``limits`` notation the API's limiter parses (``10/minute``, ``100 per hour``)."""

Rate = Annotated[
    str,
    StringConstraints(max_length=64),
    # What the schema shows: the lower-case spelling (JSON schema patterns have no flags).
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "pattern": "^ *[0-9]+ *(?:/|per) *(?:[0-9]+ *)?(?:second|minute|hour|day)s? *$",
        }
    ),
]
"""A rate limit in the ``limits`` notation (checked against :data:`_RATE`)."""

_MAX_JOBS_KEY = r"^[^$.\x00][^.\x00]*$"
MaxJobsKey = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_MAX_JOBS_KEY)]
"""A service name or a node id: a key the database stores (no '.', no leading '$')."""
MaxJobs = Annotated[int, Field(ge=1, le=10_000)]
MaxJobsMap = Annotated[
    dict[MaxJobsKey, MaxJobs],
    # pydantic would show the key's pattern as patternProperties, which leaves other keys free.
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": _MAX_JOBS_KEY, "minLength": 1, "maxLength": 200},
            "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 10_000},
        }
    ),
]
"""``max_jobs``: most jobs per node, by service name or node id."""
DiskPct = Annotated[float, Field(gt=0, le=100)]

SETTINGS_COLLECTION = "settings"
RUNTIME_ID = "runtime"


RATE_BUCKETS = ("auth", "read", "write")


class RuntimeSettings(BaseModel):
    """The runtime-changeable settings (every field optional; unset = the environment's value)."""

    model_config = ConfigDict(extra="forbid")

    max_jobs: MaxJobsMap = Field(
        default_factory=dict,
        description="Per-node capacity: most jobs a node runs, keyed by service name "
        "(`recorder`, `restreamer`) or by node id; a node id wins over its service.",
    )
    disk_warning_pct: DiskPct | None = Field(
        None, description="Disk watermark for `disk_warning`, % used."
    )
    disk_critical_pct: DiskPct | None = Field(
        None, description="Disk watermark at which recordings are refused, % used."
    )
    job_defaults: dict[Literal["recording", "restream"], dict[str, Any]] = Field(
        default_factory=dict,
        description="Defaults for new jobs per module (fields of the module's create body).",
    )
    probe_ms: int | None = Field(
        None,
        ge=100,
        le=10_000,
        description="How long FFmpeg analyses a live input before writing, ms (recorders and "
        "restreamers, from their next FFmpeg start); unset = `REELHOUSE_PROBE_MS` (2000).",
    )
    rate_limits: dict[Literal["auth", "read", "write"], Rate] = Field(
        default_factory=dict,
        description="The API's rate limits by bucket (`auth`, `read`, `write`), in the `limits` "
        'notation (`{"read": "600/minute"}`); every API replica applies them at once.',
    )

    @model_validator(mode="after")
    def _check(self) -> RuntimeSettings:
        for key, value in self.max_jobs.items():
            if not key or value < 1 or value > 10_000:
                raise ValueError(f"@max_jobs.{key}: must be between 1 and 10000")
        for key, value in self.rate_limits.items():
            if not _RATE.match(value):
                raise ValueError(f"@rate_limits.{key}: not a rate limit like '100/minute'")
        w, c = self.disk_warning_pct, self.disk_critical_pct
        if w is not None and c is not None and w >= c:
            raise ValueError("@disk_warning_pct: must be below disk_critical_pct")
        return self


async def load_runtime(db: AsyncDatabase) -> tuple[RuntimeSettings, int, datetime | None]:
    """The stored runtime settings, their version (0: never set) and when they changed."""
    doc = await db[SETTINGS_COLLECTION].find_one({"_id": RUNTIME_ID})
    if not doc:
        return RuntimeSettings(), 0, None
    values = RuntimeSettings.model_validate(doc.get("values") or {})
    return values, int(doc.get("version", 0)), doc.get("updated")


async def save_runtime(db: AsyncDatabase, values: RuntimeSettings, *, by: str) -> int:
    """Store ``values`` (one atomic upsert); returns the new version."""
    doc = await db[SETTINGS_COLLECTION].find_one_and_update(
        {"_id": RUNTIME_ID},
        {
            "$set": {"values": values.model_dump(mode="json"), "updated": utcnow(), "by": by},
            "$inc": {"version": 1},
        },
        upsert=True,
        return_document=True,
    )
    return int(doc["version"])


class RuntimeSettingsWatcher:
    """Keeps one process's settings object in step with the stored runtime settings."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        bus: Any,
        settings: Any,
        service: str,
        node_id: str,
        node: Any = None,
        refresh_s: float = 30.0,
    ) -> None:
        self.db, self.bus, self.settings = db, bus, settings
        self.service, self.node_id, self.node = service, node_id, node
        self.refresh_s = refresh_s  # seconds between looks without a config_reloaded event
        self.version = -1
        keys = ("max_jobs", "disk_warning_pct", "disk_critical_pct", "probe_ms",
                *(f"rate_limit_{bucket}" for bucket in RATE_BUCKETS))  # fmt: skip
        self._base = {k: getattr(settings, k) for k in keys if hasattr(settings, k)}
        self._wake = asyncio.Event()

    def desired(self, values: RuntimeSettings) -> dict[str, Any]:
        """What this process's settings should be under ``values``."""
        out = dict(self._base)
        if "max_jobs" in out:
            for key in (self.service, self.node_id):  # the node id wins
                if key in values.max_jobs:
                    out["max_jobs"] = values.max_jobs[key]
        if "disk_warning_pct" in out and values.disk_warning_pct is not None:
            out["disk_warning_pct"] = values.disk_warning_pct
        if "disk_critical_pct" in out and values.disk_critical_pct is not None:
            out["disk_critical_pct"] = values.disk_critical_pct
        if "probe_ms" in out and values.probe_ms is not None:
            out["probe_ms"] = values.probe_ms
        for bucket in RATE_BUCKETS:  # the API's limiter reads these on every request
            if f"rate_limit_{bucket}" in out and bucket in values.rate_limits:
                out[f"rate_limit_{bucket}"] = values.rate_limits[bucket]  # type: ignore[index]
        if out.get("disk_warning_pct", 0) >= out.get("disk_critical_pct", 100):
            log.warning("runtime_watermarks_ignored", reason="warning is not below critical")
            out["disk_warning_pct"] = self._base.get("disk_warning_pct")
            out["disk_critical_pct"] = self._base.get("disk_critical_pct")
        return out

    def apply(self, values: RuntimeSettings) -> dict[str, Any]:
        """Set the changed values on the settings object; returns them."""
        changed = {}
        for key, value in self.desired(values).items():
            if getattr(self.settings, key) != value:
                # Settings are frozen against accidental writes; this is the one deliberate one.
                object.__setattr__(self.settings, key, value)
                changed[key] = value
        if "max_jobs" in changed and self.node is not None:
            self.node.capacity = changed["max_jobs"]
        return changed

    async def refresh(self) -> dict[str, Any]:
        """Read the stored settings and apply them if their version is new."""
        values, version, _ = await load_runtime(self.db)
        if version == self.version:
            return {}
        self.version = version
        changed = self.apply(values)
        if changed:
            log.info("runtime_settings_applied", version=version, **changed)
        return changed

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh at start, on every ``config_reloaded`` and every ``refresh_s`` until ``stop``."""
        subscribed = False
        while not stop.is_set():
            if not subscribed and self.bus.connected:
                with contextlib.suppress(Exception):

                    async def on_msg(_: Any) -> None:
                        self._wake.set()

                    subject = self.bus.subjects.system_event("config_reloaded")
                    await self.bus.nc.subscribe(subject, cb=on_msg)
                    subscribed = True
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:
                log.debug("runtime_settings_unreadable", error=str(exc).splitlines()[0][:200])
            wait = 1.0 if not subscribed else self.refresh_s
            waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
