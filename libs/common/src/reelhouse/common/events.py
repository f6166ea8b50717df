"""Every event Reelhouse publishes, one model per event type (docs/ARCHITECTURE.md §3).

The names are ``Event`` in :mod:`reelhouse.common.subjects` (their one source); here each name
has its model: a subclass of the family it belongs to (:class:`JobEvent` for a job's events,
:class:`IngestEvent`, :class:`ChannelEvent`, :class:`PlatformAuthEvent`, or a model of its own)
with ``type`` fixed to its name, the subject it goes out on and the fields it carries, described.

A model re-declares the family fields its event fills in (same type, same default), so an event
serialises exactly as its family always did: same keys, same order, the ones it does not use
``null``. ``docs/EVENTS.md`` is generated from these models (``make events-catalogue``).

Publishers build an event through its model (``FileDeleted(...)``), or through
:func:`build_event` when they hold the name in a variable. Readers parse any event with
:func:`parse_event`: the union :data:`AnyEvent` is discriminated on ``type``, and a type this code
does not know becomes an :class:`UnknownEvent` (readers ignore what they do not know), never an
error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import ConfigDict, Discriminator, Field, Tag, TypeAdapter

from reelhouse.common.contracts.base import BusMessage
from reelhouse.common.contracts.channels import ChannelEvent, PlatformAuthEvent
from reelhouse.common.contracts.ingest import IngestEvent
from reelhouse.common.contracts.messages import ConfigReloaded, DiskWarning, JobEvent, RefreshReuse
from reelhouse.common.contracts.streams import StreamStatusChanged
from reelhouse.common.subjects import EVENTS

# -- what every member of a family carries -----------------------------------------------------

FAMILY_FIELDS: dict[type[BusMessage], tuple[str, ...]] = {
    JobEvent: ("type", "version", "module", "job_id", "tenant", "node", "timestamp", "channel_id"),
    IngestEvent: ("type", "version", "module", "job_id", "tenant", "node", "timestamp", "proto",
                  "name", "role", "via", "remote", "conn"),
    ChannelEvent: ("type", "version", "module", "channel_id", "job_id", "recording_job_id",
                   "tenant", "node", "timestamp", "status", "platform"),
}  # fmt: skip
"""The fields every event of a family fills in (the catalogue lists them with each event); a
family's other fields are ``null`` unless the event's model re-declares them."""

FIELD_DOCS: dict[str, str] = {
    "type": "The event's name (the subject's last token).",
    "version": "The message format's version (1).",
    "module": "The kind of job: `recording`, `restream`, `stream`, `ingest` or `channel`.",
    "job_id": "The job's id (24 hex), the subject's job token.",
    "tenant": "The tenant that owns the job.",
    "node": "The node that published the event.",
    "timestamp": "When the event happened (`2026-03-24T12:00:00.000Z`).",
    "channel_id": "The channel whose job this is (issue 22), on every event of a channel's job.",
    "recording_job_id": "The recording job the channel starts when it is live.",
    "status": "The channel's status: `offline`, `live`, `recording`, `error`...",
    "platform": "The channel's platform.",
    "proto": "The contribution's protocol: `srt` or `rtmp`.",
    "name": "The contribution (`main-stage/srt-main`), when known.",
    "role": "The connection's role: `publish` or `read`.",
    "via": "Where the connection came in: `server` (its own port) or `fanout`.",
    "remote": "The caller's address (`ip:port`).",
    "conn": "The connection's id (unique per ingest process).",
}
"""Descriptions of the family fields (the fields an event re-declares carry their own)."""


def _file(what: str) -> Any:
    return Field(None, description=f"The file record as the API shows it ({what}).")


def _reason(what: str) -> Any:
    return Field(None, description=what)


_JOB = "<p>.evt.{recording,restream}.<job_id>"
_REC = "<p>.evt.recording.<job_id>"
_INGEST = "<p>.evt.ingest.<server_id>"
_CHANNEL = "<p>.evt.channel.<channel_id>"

# -- a job's life (recorder, restreamer; pause and resume from the API) -------------------------


class JobStarted(JobEvent):
    """A job's FFmpeg runs (first start, or back after a retry)."""

    subject: ClassVar[str] = f"{_JOB}.job_started"
    type: Literal["job_started"] = "job_started"
    state: str | None = Field(None, description="The supervisor's state (`running`).")
    reason: str | None = _reason("Why it (re)started, when known.")


class JobStopped(JobEvent):
    """A job ended as asked (stopped, its window closed, its source ended)."""

    subject: ClassVar[str] = f"{_JOB}.job_stopped"
    type: Literal["job_stopped"] = "job_stopped"
    state: str | None = Field(None, description="The supervisor's final state (`stopped`).")
    reason: str | None = _reason("Why it stopped.")


class JobFailed(JobEvent):
    """A job failed: for good (``state: failed``) or degraded while it retries (``retrying``)."""

    subject: ClassVar[str] = f"{_JOB}.job_failed"
    type: Literal["job_failed"] = "job_failed"
    state: str | None = Field(None, description="`failed` (for good) or `retrying`.")
    reason: str | None = _reason("What failed (FFmpeg's words, a destination's refusal...).")


class JobRetrying(JobEvent):
    """A job's FFmpeg exited and the supervisor starts it again."""

    subject: ClassVar[str] = f"{_JOB}.job_retrying"
    type: Literal["job_retrying"] = "job_retrying"
    state: str | None = Field(None, description="The supervisor's state (`retrying`).")
    reason: str | None = _reason("Why FFmpeg exited.")
    restarts: int | None = Field(None, description="FFmpeg restarts of this run so far.")


class JobPaused(JobEvent):
    """A recording was paused through the API (its part is closed; the job stays)."""

    subject: ClassVar[str] = f"{_REC}.job_paused"
    type: Literal["job_paused"] = "job_paused"


class JobResumed(JobEvent):
    """A paused recording was resumed through the API (a new part, same recording)."""

    subject: ClassVar[str] = f"{_REC}.job_resumed"
    type: Literal["job_resumed"] = "job_resumed"


class QuotaExceeded(JobEvent):
    """A recording reached its tenant's storage quota and stops."""

    subject: ClassVar[str] = f"{_REC}.quota_exceeded"
    type: Literal["quota_exceeded"] = "quota_exceeded"
    state: str | None = Field(None, description="`stopping`.")
    reason: str | None = _reason("The quota and what the files hold.")


class ScheduleSkip(JobEvent):
    """A job's schedule window opened but the job could not start in it.

    A channel's prober publishes it too, for a live channel outside its schedule windows, on
    ``<p>.evt.channel.<channel_id>.schedule_skip``: that one is a ``ChannelEvent`` (the fields of
    ``filter_skip``), which this model reads as well (a family's other fields are ignored)."""

    subject: ClassVar[str] = "<p>.evt.{recording,restream,channel}.<job_id>.schedule_skip"
    type: Literal["schedule_skip"] = "schedule_skip"
    state: str | None = Field(None, description="The job's state when the window opened.")
    reason: str | None = _reason("The window and why it was skipped.")


# -- a recording's files (recorder, janitor, API) ----------------------------------------------


class FileOpened(JobEvent):
    """A recording started writing a file (a part or a segment)."""

    subject: ClassVar[str] = f"{_REC}.file_opened"
    type: Literal["file_opened"] = "file_opened"
    file: dict[str, Any] | None = _file("status `recording`")


class FileClosed(JobEvent):
    """A recording finished writing a file."""

    subject: ClassVar[str] = f"{_REC}.file_closed"
    type: Literal["file_closed"] = "file_closed"
    file: dict[str, Any] | None = _file("closed")


class FileReady(JobEvent):
    """A file is complete and can be downloaded."""

    subject: ClassVar[str] = f"{_REC}.file_ready"
    type: Literal["file_ready"] = "file_ready"
    file: dict[str, Any] | None = _file("status `ready`")


class FileFailed(JobEvent):
    """A file could not be finished (it is gone from the disk, or processing it failed)."""

    subject: ClassVar[str] = f"{_REC}.file_failed"
    type: Literal["file_failed"] = "file_failed"
    file: dict[str, Any] | None = _file("status `failed`")
    reason: str | None = _reason("Why it failed.")


class FileDeleted(JobEvent):
    """A file was deleted: through the API, or by the janitor's retention."""

    subject: ClassVar[str] = f"{_REC}.file_deleted"
    type: Literal["file_deleted"] = "file_deleted"
    file: dict[str, Any] | None = _file("as it was")
    reason: str | None = _reason("The janitor's reason (retention, quota...); none from the API.")


class FileArchived(JobEvent):
    """A file was moved to the archive through the API."""

    subject: ClassVar[str] = f"{_REC}.file_archived"
    type: Literal["file_archived"] = "file_archived"
    file: dict[str, Any] | None = _file("archived")


class SegmentDownloaded(JobEvent):
    """A channel's recording captured a part or a segment (the channel recorder's name for
    ``file_closed``)."""

    subject: ClassVar[str] = f"{_REC}.segment_downloaded"
    type: Literal["segment_downloaded"] = "segment_downloaded"
    file: dict[str, Any] | None = _file("closed")


# -- a recording's processing (joining parts, remuxing) -----------------------------------------


class ProcessingStarted(JobEvent):
    """Processing of a recording's file started."""

    subject: ClassVar[str] = f"{_REC}.processing_started"
    type: Literal["processing_started"] = "processing_started"
    file: dict[str, Any] | None = _file("status `processing`")


class ProcessingProgress(JobEvent):
    """How far processing has come."""

    subject: ClassVar[str] = f"{_REC}.processing_progress"
    type: Literal["processing_progress"] = "processing_progress"
    file: dict[str, Any] | None = _file("being processed")
    progress_pct: float | None = Field(
        None, description="How much of the media FFmpeg has copied (0-100)."
    )


class ProcessingComplete(JobEvent):
    """Processing finished; a ``file_ready`` follows."""

    subject: ClassVar[str] = f"{_REC}.processing_complete"
    type: Literal["processing_complete"] = "processing_complete"
    file: dict[str, Any] | None = _file("the result")


class ProcessingFailed(JobEvent):
    """Processing failed; the parts stay as they were."""

    subject: ClassVar[str] = f"{_REC}.processing_failed"
    type: Literal["processing_failed"] = "processing_failed"
    file: dict[str, Any] | None = _file("the first part")
    reason: str | None = _reason("FFmpeg's words about the failure.")


# -- object storage (issue 24): a file's upload to its job's storage target ---------------------
# The upload's facts travel in the file record's ``upload`` block (``state``, ``storage_id``,
# ``key``, ``parts``, ``bytes_done``, ``size``, ``etag``), so the events add no field to the family.


class UploadStarted(JobEvent):
    """The janitor started (or resumed) uploading a file to the job's storage target."""

    subject: ClassVar[str] = f"{_REC}.upload_started"
    type: Literal["upload_started"] = "upload_started"
    file: dict[str, Any] | None = _file(
        "`upload`: `state` `uploading`, `storage_id`, `key`, the `parts` already in the bucket"
    )


class UploadProgress(JobEvent):
    """How far an upload has come (at most one a second per file)."""

    subject: ClassVar[str] = f"{_REC}.upload_progress"
    type: Literal["upload_progress"] = "upload_progress"
    file: dict[str, Any] | None = _file("`upload.bytes_done` of `upload.size`")
    progress_pct: float | None = Field(None, description="Bytes in the bucket, percent (0-100).")


class UploadComplete(JobEvent):
    """The object is in the bucket and verified against the local file (size, ETag)."""

    subject: ClassVar[str] = f"{_REC}.upload_complete"
    type: Literal["upload_complete"] = "upload_complete"
    file: dict[str, Any] | None = _file("`upload.state` `uploaded`, `key`, `etag`, `size`")


class UploadFailed(JobEvent):
    """An upload attempt failed; it is retried after ``delay_s`` (capped backoff, jitter)."""

    subject: ClassVar[str] = f"{_REC}.upload_failed"
    type: Literal["upload_failed"] = "upload_failed"
    file: dict[str, Any] | None = _file("`upload.state` `failed`, `attempts`, `retry_at`")
    reason: str | None = _reason(
        "The failure class: `auth`, `no_bucket`, `denied`, `unreachable`, `timeout`, "
        "`forbidden_address`, `no_target`, `verify`, `missing` or `error` (never remote text)."
    )
    delay_s: float | None = Field(None, description="Seconds until the next attempt.")


# -- ingest servers (``job_id`` is the server's id) -----------------------------------------------


class IngestRefused(IngestEvent):
    """A connection to an ingest server was refused."""

    subject: ClassVar[str] = f"{_INGEST}.ingest_refused"
    type: Literal["ingest_refused"] = "ingest_refused"
    reason: str | None = _reason("Why (`forbidden`, `bad_stream_id`, `bad_passphrase`...).")
    stream_id: str | None = Field(None, description="The raw stream id the caller sent.")


class PublisherUp(IngestEvent):
    """A contribution's first publisher was accepted."""

    subject: ClassVar[str] = f"{_INGEST}.publisher_up"
    type: Literal["publisher_up"] = "publisher_up"


class PublisherLost(IngestEvent):
    """A contribution's publisher went away; its readers are held for the gap hold."""

    subject: ClassVar[str] = f"{_INGEST}.publisher_lost"
    type: Literal["publisher_lost"] = "publisher_lost"
    reason: str | None = _reason("`closed`, `timeout` or `replaced`.")


class PublisherBack(IngestEvent):
    """A publisher returned within the gap hold."""

    subject: ClassVar[str] = f"{_INGEST}.publisher_back"
    type: Literal["publisher_back"] = "publisher_back"
    gap_ms: int | None = Field(None, description="How long the contribution had no publisher.")


class PublisherReplaced(IngestEvent):
    """A returning publisher took over an idle one."""

    subject: ClassVar[str] = f"{_INGEST}.publisher_replaced"
    type: Literal["publisher_replaced"] = "publisher_replaced"
    idle_ms: int | None = Field(None, description="How long the old publisher had been silent.")
    old_remote: str | None = Field(None, description="The old publisher's address.")


class ContributionEnded(IngestEvent):
    """A contribution ended: its hold ran out, it was dropped, or its server closed."""

    subject: ClassVar[str] = f"{_INGEST}.contribution_ended"
    type: Literal["contribution_ended"] = "contribution_ended"
    reason: str | None = _reason("`gap`, `dropped`, `closed` or `crashed`.")


# -- channels (issue 22; published by the prober that watches the channel) ----------------------


class ChannelStatusEvent(ChannelEvent):
    """A channel's status changed."""

    subject: ClassVar[str] = f"{_CHANNEL}.channel_status"
    type: Literal["channel_status"] = "channel_status"
    reason: str | None = _reason("The check's error, when the status is `error`.")


class ChannelError(ChannelEvent):
    """Checking a channel failed."""

    subject: ClassVar[str] = f"{_CHANNEL}.channel_error"
    type: Literal["channel_error"] = "channel_error"
    reason: str | None = _reason("The check's error.")


class RecordingStarted(ChannelEvent):
    """A live channel's recording started."""

    subject: ClassVar[str] = f"{_CHANNEL}.recording_started"
    type: Literal["recording_started"] = "recording_started"
    recording_id: str | None = Field(None, description="The channel recording's id.")
    title: str | None = Field(None, description="The broadcast's title.")
    category: str | None = Field(None, description="The broadcast's category.")


class RecordingEnded(ChannelEvent):
    """A channel's recording ended."""

    subject: ClassVar[str] = f"{_CHANNEL}.recording_ended"
    type: Literal["recording_ended"] = "recording_ended"
    recording_id: str | None = Field(None, description="The channel recording's id.")
    reason: str | None = _reason("Why it ended (the channel went offline, it was stopped...).")
    title: str | None = Field(None, description="The broadcast's title.")
    category: str | None = Field(None, description="The broadcast's category.")


class FilterSkip(ChannelEvent):
    """A channel is live but its filters keep this broadcast from being recorded."""

    subject: ClassVar[str] = f"{_CHANNEL}.filter_skip"
    type: Literal["filter_skip"] = "filter_skip"
    reason: str | None = _reason("The filter that did not match.")
    title: str | None = Field(None, description="The broadcast's title.")
    category: str | None = Field(None, description="The broadcast's category.")


class QuotaSkip(ChannelEvent):
    """A channel is live but its files fill its quota: the broadcast is not recorded."""

    subject: ClassVar[str] = f"{_CHANNEL}.quota_skip"
    type: Literal["quota_skip"] = "quota_skip"
    reason: str | None = _reason("What the channel's files hold against its quota.")
    title: str | None = Field(None, description="The broadcast's title.")
    category: str | None = Field(None, description="The broadcast's category.")


class QuotaStatusChanged(ChannelEvent):
    """A channel's quota status changed."""

    subject: ClassVar[str] = f"{_CHANNEL}.quota_status_changed"
    type: Literal["quota_status_changed"] = "quota_status_changed"
    reason: str | None = _reason("The new quota status.")
    extra: dict[str, Any] | None = Field(
        None, description="`quota_status`, `used_bytes` and `quota_bytes`."
    )


class PlatformAuthUpdated(PlatformAuthEvent):
    """A platform's credentials were set through the API (never in the event)."""

    subject: ClassVar[str] = "<p>.evt.channel.<auth_id>.platform_auth_updated"
    type: Literal["platform_auth_updated"] = "platform_auth_updated"


class PlatformAuthExpired(PlatformAuthEvent):
    """A platform refused its credentials during a channel's check."""

    subject: ClassVar[str] = "<p>.evt.channel.<auth_id>.platform_auth_expired"
    type: Literal["platform_auth_expired"] = "platform_auth_expired"


class UnknownEvent(BusMessage):
    """An event whose ``type`` this code does not know (a newer publisher's): kept as it came,
    every field, so a reader can pass it on or ignore it."""

    model_config = ConfigDict(extra="allow")

    subject: ClassVar[str] = "<p>.evt.>"


EVENT_MODELS: tuple[type[BusMessage], ...] = (
    JobStarted, JobStopped, JobFailed, JobRetrying, JobPaused, JobResumed,
    FileOpened, FileClosed, FileReady, FileFailed, FileDeleted, FileArchived,
    ProcessingStarted, ProcessingProgress, ProcessingComplete, ProcessingFailed,
    QuotaExceeded, DiskWarning, StreamStatusChanged, ConfigReloaded, ScheduleSkip,
    RefreshReuse,
    IngestRefused, PublisherUp, PublisherLost, PublisherBack, PublisherReplaced,
    ContributionEnded,
    ChannelStatusEvent, ChannelError, RecordingStarted, SegmentDownloaded,
    RecordingEnded, FilterSkip, QuotaSkip, QuotaStatusChanged,
    PlatformAuthUpdated, PlatformAuthExpired,
    UploadStarted, UploadProgress, UploadComplete, UploadFailed,
)  # fmt: skip
"""One model per name in ``Event``, in its order (a unit test holds the two together)."""


def event_type(model: type[BusMessage]) -> str:
    """The event name a model stands for (its ``type``'s default)."""
    return str(model.model_fields["type"].default)


MODEL_BY_TYPE: dict[str, type[BusMessage]] = {event_type(m): m for m in EVENT_MODELS}
_UNKNOWN = "__unknown__"


def build_event(event: str, /, **fields: Any) -> BusMessage:
    """The event named ``event`` as its model (for publishers that hold the name in a variable);
    ``KeyError`` for a name that is not in ``Event``. Positional-only: ``name`` is a field (an
    ingest event's contribution)."""
    return MODEL_BY_TYPE[event](type=event, **fields)


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in MODEL_BY_TYPE else _UNKNOWN


_MEMBERS = (
    *(Annotated[m, Tag(event_type(m))] for m in EVENT_MODELS),
    Annotated[UnknownEvent, Tag(_UNKNOWN)],
)
AnyEvent = Annotated[
    Union[_MEMBERS],  # noqa: UP007 (built from a tuple)
    Discriminator(_tag),
]
"""Any event: the member its ``type`` names, or :class:`UnknownEvent`."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def parse_event(data: str | bytes | bytearray | Mapping[str, Any]) -> BusMessage:
    """An event from its JSON (or its dict): the model of its ``type``, or an
    :class:`UnknownEvent` for a type this code does not know. A known type with invalid fields
    raises ``pydantic.ValidationError`` as its model would, and so does data with no ``type``
    (not an event)."""
    if isinstance(data, Mapping):
        return _ADAPTER.validate_python(dict(data))
    return _ADAPTER.validate_json(data)


__all__ = [
    "EVENTS", "EVENT_MODELS", "FAMILY_FIELDS", "FIELD_DOCS", "MODEL_BY_TYPE", "AnyEvent",
    "UnknownEvent", "build_event", "event_type", "parse_event",
]  # fmt: skip
