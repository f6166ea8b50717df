"""Channels (docs/ARCHITECTURE.md §9, ``seeds/channel-recorder-api.txt``): watched live sources that
record every broadcast, their recordings (one per broadcast) and their events.

A channel owns one recording job (``channel_id`` on the job); a channel's *recording* is one
broadcast: one session (``generation``) of that job, with its files. Field names follow the
seed (``name``, ``platform``, ``url``, ``quality``, ``enabled``, ``output_format``,
``schedule``, ``filters``, ``quota_bytes``, ``delete_after``, ``status``, ``last_checked``,
``last_live``, ``last_error``).
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from reelhouse.common.contracts.base import BusMessage, Timestamp, utcnow
from reelhouse.common.contracts.media import CrossFieldSchema, Schedule
from reelhouse.common.contracts.types import (
    NUL_FREE_PATTERN,
    SAFE_INT,
    Name,
    _stream_url,
    url_pattern,
    url_scheme,
    whole_int,
)
from reelhouse.common.subjects import Event

Platform = Literal["url", "twitch", "youtube", "kick"]
"""``url``: any live URL (streamlink's generic HLS/HTTP handling); the others by streamlink's
plugin of that name."""

ChannelStatus = Literal["offline", "live", "recording", "error", "disabled"]
ChannelOutputFormat = Literal["mp4", "mkv", "mpegts", "flv"]
RecordingStatus = Literal["recording", "processing", "ready", "failed", "stopped", "deleted"]

PLATFORM_HOSTS: dict[str, tuple[str, ...]] = {
    "twitch": ("twitch.tv", "www.twitch.tv"),
    "youtube": ("youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be"),
    "kick": ("kick.com", "www.kick.com"),
}
"""Hosts of each platform's channel URLs (a bare login becomes ``https://<first host>/<login>``,
YouTube's ``https://www.youtube.com/@<login>/live``)."""

FilterPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=NUL_FREE_PATTERN)
]
"""One title or category pattern: 1 to 200 characters."""
Pattern = Field(default_factory=list, max_length=50)


class ChannelFilters(BaseModel):
    """Title and category rules. A pattern is a case-insensitive shell glob (``*``, ``?``,
    ``[ab]``); one without a wildcard matches anywhere in the text. Include lists must match
    when given; exclude lists must not."""

    model_config = ConfigDict(extra="forbid")

    title_include: list[FilterPattern] = Pattern
    title_exclude: list[FilterPattern] = Pattern
    category_include: list[FilterPattern] = Pattern
    category_exclude: list[FilterPattern] = Pattern

    def refusal(self, title: str | None, category: str | None) -> str | None:
        """Why the rules say no to a broadcast with this title and category (None: yes)."""
        for label, text, include, exclude in (
            ("title", title, self.title_include, self.title_exclude),
            ("category", category, self.category_include, self.category_exclude),
        ):
            if include and not any(_matches(p, text) for p in include):
                return f"{label} {text!r} matches none of {label}_include {include}"
            hit = next((p for p in exclude if _matches(p, text)), None)
            if hit is not None:
                return f"{label} {text!r} matches {label}_exclude pattern {hit!r}"
        return None


def _matches(pattern: str, text: str | None) -> bool:
    if text is None:
        return False
    pattern, text = pattern.lower(), text.lower()
    if not any(c in pattern for c in "*?["):
        return pattern in text
    return fnmatch.fnmatchcase(text, pattern)


class ChannelIn(CrossFieldSchema):
    """Body of ``POST /api/channels`` and ``PUT /api/channels/{id}``."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    platform: Platform = "url"
    url: str = Field(min_length=1, max_length=2048, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    """The channel's URL, or the platform login (``twitch``, ``kick``, ``youtube``)."""
    quality: str = Field("best", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_,+-]+$")
    """Streamlink's stream name(s), best first (``best``, ``720p60,720p,best``)."""
    enabled: StrictBool = True
    output_format: ChannelOutputFormat = "mp4"
    schedule: Schedule | None = None
    """When to record (windows); a broadcast outside them is a ``schedule_skip``."""
    filters: ChannelFilters = Field(default_factory=ChannelFilters)
    quota_bytes: whole_int(ge=0, le=SAFE_INT) = 0
    """Most bytes of this channel's files (0: no quota). A broadcast that starts at or above it
    is a ``quota_skip``; one that reaches it while recording is stopped (``quota_exceeded``)."""
    delete_after: whole_int(ge=0, le=36500) = 0
    """Days a finished recording's files are kept (0: forever)."""

    @model_validator(mode="after")
    def _resolvable(self) -> ChannelIn:
        url = self.source_url()
        try:  # what streamlink and FFmpeg get must be a URL (a login becomes one)
            _stream_url(url)
        except ValueError as exc:
            raise ValueError(f"@url: {exc}") from None
        if url_scheme(url) not in ("http", "https"):
            raise ValueError("@url: a channel is read over http:// or https://")
        return self

    @classmethod
    def cross_field_schema(cls) -> dict[str, Any]:
        web = url_pattern(("http", "https"))
        login = r"^[A-Za-z0-9_.@-]+$"
        return {
            "if": {"properties": {"platform": {"not": {"const": "url"}}},
                   "required": ["platform"]},
            "then": {"properties": {"url": {"anyOf": [{"pattern": login}, {"pattern": web}]}}},
            "else": {"properties": {"url": {"pattern": web}}},
        }  # fmt: skip

    def source_url(self) -> str:
        """The URL streamlink resolves: the ``url`` itself or the platform's channel URL."""
        if "://" in self.url or self.platform == "url":
            return self.url
        login = self.url.strip("/@")
        if self.platform == "youtube":
            return f"https://www.youtube.com/@{login}/live"
        return f"https://{PLATFORM_HOSTS[self.platform][0]}/{login}"


class ChannelCheck(BusMessage):
    """Request to the prober: check a channel now (``<p>.req.prober.channel_check``)."""

    type: Literal["channel_check"] = "channel_check"
    channel_id: str
    tenant: str


class LiveInfo(BusMessage):
    """A live check's result: the ``check`` answer, and the channel's key in the live plane
    (``progress.channel.<id>``)."""

    type: Literal["channel_live"] = "channel_live"
    channel_id: str
    live: bool
    title: str | None = None
    category: str | None = None
    started_at: Timestamp | None = None
    """When this broadcast was first seen live."""
    status: ChannelStatus = "offline"
    checked_at: Timestamp = Field(default_factory=utcnow)
    error: str | None = None
    node: str | None = None


class ChannelEvent(BusMessage):
    """One event of a channel, on ``<p>.evt.channel.<channel_id>.<event>``."""

    type: Event  # type: ignore[assignment]
    module: Literal["channel"] = "channel"
    channel_id: str
    job_id: str
    """The channel's id (the subject's job token), as in every event."""
    recording_job_id: str | None = None
    tenant: str
    node: str | None = None
    timestamp: Timestamp = Field(default_factory=utcnow)
    status: ChannelStatus | None = None
    recording_id: str | None = None
    title: str | None = None
    category: str | None = None
    reason: str | None = None
    platform: str | None = None
    extra: dict[str, Any] | None = None


class PlatformAuthEvent(BusMessage):
    """``platform_auth_updated`` (credentials set through the API) or ``platform_auth_expired``
    (the platform refused them during a check), on ``<p>.evt.channel.<auth_id>.<event>``; the
    credentials themselves are never in an event."""

    type: Literal["platform_auth_updated", "platform_auth_expired"]  # type: ignore[assignment]
    module: Literal["channel"] = "channel"
    job_id: str
    """The ``platform_auth`` document's id."""
    tenant: str
    platform: str
    timestamp: Timestamp = Field(default_factory=utcnow)
    set_at: Timestamp | None = None
    channel_id: str | None = None
    """The channel whose check was refused (``platform_auth_expired``)."""
    reason: str | None = None
    node: str | None = None
