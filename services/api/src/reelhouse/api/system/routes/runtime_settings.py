"""``/api/settings``: runtime settings, changed without a restart (admin role).

``update`` changes only the fields it is given (``null`` resets a field to the environment's
value), stores the result with a new version, and publishes ``config_reloaded`` on
``<p>.evt.system.config_reloaded``; every service's :class:`~reelhouse.common.runtime.
RuntimeSettingsWatcher` applies what concerns it (``max_jobs``, disk watermarks) at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from reelhouse.api.deps import State, SystemAdmin
from reelhouse.api.system.schemas import JobDefaults, SettingsUpdate
from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.contracts.messages import ConfigReloaded
from reelhouse.common.logging import get_logger
from reelhouse.common.runtime import (
    RuntimeSettings,
    load_runtime,
    save_runtime,
)

log = get_logger("reelhouse.api.settings")

router = APIRouter(prefix="/api/settings", tags=["settings"])


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
