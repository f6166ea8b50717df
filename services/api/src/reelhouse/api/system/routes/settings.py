"""``/api/settings``: runtime settings, changed without a restart (admin role).

``update`` changes only the fields it is given (``null`` resets a field to the environment's
value), stores the result with a new version, and publishes ``config_reloaded`` on
``<p>.evt.system.config_reloaded``; every service's :class:`~reelhouse.common.runtime.
RuntimeSettingsWatcher` applies what concerns it (``max_jobs``, disk watermarks) at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from reelhouse.api.deps import State, SystemAdmin
from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.contracts.recording import RecordingIn
from reelhouse.common.contracts.restream import RestreamIn
from reelhouse.common.logging import get_logger
from reelhouse.common.runtime import (
    ConfigReloaded,
    DiskPct,
    MaxJobsMap,
    Rate,
    RuntimeSettings,
    load_runtime,
    save_runtime,
)

log = get_logger("reelhouse.api.settings")

router = APIRouter(prefix="/api/settings", tags=["settings"])


def _defaults_of(model: type[BaseModel]) -> type[BaseModel]:
    """Defaults for ``model``'s create body: any of its fields, each validated as there (the
    whole body is validated again when a create uses them)."""
    fields: dict[str, Any] = {
        name: (Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation,
               Field(None, description=info.description))
        for name, info in model.model_fields.items()
    }  # fmt: skip
    return create_model(
        f"{model.__name__}Defaults",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Defaults for new jobs: fields of {model.__name__}, as there.",
        **fields,
    )


class JobDefaults(BaseModel):
    """Defaults for new jobs, per module."""

    model_config = ConfigDict(extra="forbid")

    recording: _defaults_of(RecordingIn) | None = None  # type: ignore[valid-type]
    restream: _defaults_of(RestreamIn) | None = None  # type: ignore[valid-type]

    def stored(self) -> dict[str, dict[str, Any]]:
        """The defaults as stored: per module, the fields given."""
        out = {}
        for module in type(self).model_fields:
            value = getattr(self, module)
            if value is not None:
                out[module] = value.model_dump(mode="json", exclude_unset=True)
        return out


class SettingsUpdate(BaseModel):
    """The fields to change; ``null`` resets one to the environment's value."""

    model_config = ConfigDict(extra="forbid")

    max_jobs: MaxJobsMap | None = Field(
        None, description="Most jobs per node, by service name or node id (node id wins)."
    )
    disk_warning_pct: DiskPct | None = Field(
        None, description="Disk warning watermark, % used; below the critical one."
    )
    disk_critical_pct: DiskPct | None = Field(None, description="Disk critical watermark, % used.")
    job_defaults: JobDefaults | None = Field(
        None, description="Defaults for new jobs per module (fields of its create body)."
    )
    rate_limits: dict[Literal["auth", "read", "write"], Rate] | None = Field(
        None,
        description='The API\'s rate limits by bucket (`limits` notation, e.g. {"read": '
        '"600/minute"}); applied by every API replica without a restart.',
    )


def _view(values: RuntimeSettings, version: int, updated: Any) -> dict[str, Any]:
    return {
        "success": True,
        "version": version,
        "updated": format_timestamp(updated) if updated else None,
        "settings": values.model_dump(mode="json"),
    }


@router.post("/get", summary="The runtime settings")
async def get(state: State, _: SystemAdmin) -> dict[str, Any]:
    """The stored values (unset ones follow each service's environment) and their version."""
    values, version, updated = await load_runtime(state.db)
    return _view(values, version, updated)


@router.post("/update", summary="Change runtime settings (no restart)")
async def update(
    request: Request, state: State, principal: SystemAdmin, body: Annotated[SettingsUpdate, Body()]
) -> dict[str, Any]:
    """Merge the given fields, store, and tell every service (``config_reloaded``)."""
    current, _, _ = await load_runtime(state.db)
    merged = current.model_dump()
    defaults = RuntimeSettings().model_dump()
    changed = sorted(body.model_fields_set)
    for key in changed:
        value = getattr(body, key)
        if isinstance(value, JobDefaults):
            value = value.stored()
        merged[key] = defaults[key] if value is None else value
    try:
        values = RuntimeSettings.model_validate(merged)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    version = await save_runtime(state.db, values, by=principal.id)
    event = ConfigReloaded(
        version=version, changed=changed, node=state.node.node_id, by=principal.id
    )
    try:
        await state.bus.publish(state.bus.subjects.system_event("config_reloaded"), event)
    except Exception as exc:  # the services' periodic refresh picks it up anyway
        log.warning("config_reloaded_not_published", error=str(exc)[:200])
    watcher = getattr(request.app.state, "runtime_watcher", None)
    if watcher is not None:
        await watcher.refresh()
    log.info("runtime_settings_updated", version=version, changed=changed, by=principal.id)
    _, _, updated = await load_runtime(state.db)
    return _view(values, version, updated)
