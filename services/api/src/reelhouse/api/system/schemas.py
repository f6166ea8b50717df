"""Request bodies of ``/api/nodes/*``, ``/api/settings/*`` and ``/api/system/*``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from reelhouse.common.contracts.recording import RecordingIn
from reelhouse.common.contracts.restream import RestreamIn
from reelhouse.common.contracts.types import NUL_FREE_PATTERN
from reelhouse.common.runtime import DiskPct, MaxJobsMap, Rate
from reelhouse.common.subjects import Service


class NodesQuery(BaseModel):
    """Optional filters of ``getAll``."""

    model_config = ConfigDict(extra="forbid")

    service: Service | None = Field(None, description="Only nodes of this service.")
    alive: bool | None = Field(None, description="Only nodes that are (or are not) alive.")


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


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["warning", "error", "critical"] = Field(
        "warning", description="Lowest level returned."
    )
    from_: AwareDatetime | None = Field(None, alias="from", description="Records at or after.")
    to: AwareDatetime | None = Field(None, description="Records before.")
    limit: int = Field(100, ge=1, le=1000)
    service: str | None = Field(
        None, max_length=64, pattern=NUL_FREE_PATTERN, description="Only this service's records."
    )
    node: str | None = Field(
        None, max_length=200, pattern=NUL_FREE_PATTERN, description="Only this node's records."
    )


class DependenciesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh: bool = Field(False, description="Read the tools again instead of the cached facts.")
