"""Request bodies of ``/api/webhooks/*``."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.types import NUL_FREE_PATTERN, url_pattern
from reelhouse.common.subjects import Event, Module

HookModule = Module | Literal["storage", "system", "auth"]


class WebhookCreate(BaseModel):
    """A receiver of events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        ...,
        max_length=2048,
        description="http(s) URL the deliveries are POSTed to.",
        json_schema_extra={"pattern": url_pattern(("http", "https"), host_required=True)},
    )
    events: list[Event] = Field(
        default_factory=list, description="Event types to deliver (empty: every event)."
    )
    modules: list[HookModule] = Field(
        default_factory=list, description="Modules to deliver events of (empty: every module)."
    )
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        pattern=NUL_FREE_PATTERN,
        description="HMAC-SHA256 key of the signature header. Unset: one is generated and "
        "returned once, in this response.",
    )
    description: str = Field("", max_length=500, pattern=NUL_FREE_PATTERN)
    active: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        return v.strip()


class WebhookId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr = Field(..., description="The webhook's id.")


class DeliveriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr = Field(..., description="The webhook's id.")
    status: Literal["pending", "delivered", "failed", "cancelled"] | None = None
    limit: int = Field(50, ge=1, le=500)
