"""Every NATS subject Reelhouse uses, built here and nowhere else (docs/ARCHITECTURE.md §3).

Scheme (``<p>`` is the deployment's subject prefix, default ``reelhouse``)::

    <p>.cmd.<service>.<verb>               command hint, queue group = service name
                                           verb: start | stop | reload; job id in the payload
    <p>.req.prober.probe                   request/reply (NATS micro service)
    <p>.req.janitor.cleanup                request/reply: run a janitor pass now (queue group)
    <p>.stats.<module>.<job_id>            progress, about once a second per running job
    <p>.stats.ingest.<server_id>           an ingest server's transport statistics (once a second)
    <p>.evt.<module>.<job_id>.<event>      events; kept in a JetStream stream by age
                                           (ingest: ``<p>.evt.ingest.<server_id>.<event>``)
    <p>.evt.storage.<event>                storage-wide events of no job (``disk_warning``)
    <p>.evt.system.<event>                 deployment-wide events of no job (``config_reloaded``)
    <p>.evt.auth.<event>                   account events of no job, with a tenant
                                           (``auth_refresh_reuse``)
    <p>.auth.changed                       an account changed (token version, role, removal,
                                           key revoked): every API replica drops what it cached

    <p>.req.prober.channel_check           request: check one channel's live status now; the
                                           prober that watches the channel answers
    <p>.sys.shutdown                       the stack is shutting down (``POST
                                           /api/system/shutdown``): ``prepare`` (start nothing
                                           new), then ``exit`` (every service stops, exit 0)

``<module>`` is ``recording``, ``restream``, ``stream``, ``ingest`` (whose "job" is an SRT or
RTMP server: docs/INGEST.md) or ``channel``. Job ids are 24-hex ObjectId strings; user text
(names, URLs) never goes into a subject.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

Service = Literal["api", "recorder", "restreamer", "prober", "janitor", "ingest"]
Verb = Literal["start", "stop", "reload"]
Module = Literal["recording", "restream", "stream", "ingest", "channel"]
Event = Literal[
    "job_started", "job_stopped", "job_failed", "job_retrying", "job_paused", "job_resumed",
    "file_opened", "file_closed", "file_ready", "file_failed", "file_deleted", "file_archived",
    "processing_started", "processing_progress", "processing_complete", "processing_failed",
    "quota_exceeded", "disk_warning", "stream_status", "config_reloaded", "schedule_skip",
    "auth_refresh_reuse",
    "ingest_refused", "publisher_up", "publisher_lost", "publisher_back", "publisher_replaced",
    "contribution_ended",
    # channels (issue 22): the channel-recorder seed's events
    "channel_status", "channel_error", "recording_started", "segment_downloaded",
    "recording_ended", "filter_skip", "quota_skip", "quota_status_changed",
    "platform_auth_updated", "platform_auth_expired",
    # object storage (issue 24): a recorded file's upload to its job's storage target
    "upload_started", "upload_progress", "upload_complete", "upload_failed",
]  # fmt: skip

SERVICES: tuple[str, ...] = Service.__args__  # type: ignore[attr-defined]
VERBS: tuple[str, ...] = Verb.__args__  # type: ignore[attr-defined]
MODULES: tuple[str, ...] = Module.__args__  # type: ignore[attr-defined]
EVENTS: tuple[str, ...] = Event.__args__  # type: ignore[attr-defined]

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _key_token(value: str) -> str:
    """``value`` as one key token: anything but letters, digits, ``-`` and ``_`` becomes ``_``."""
    token = re.sub(r"[^A-Za-z0-9_-]", "_", value)
    if not token:
        raise ValueError("a key token cannot be empty")
    return token


def ingest_token(name: str) -> str:
    """The key token of a contribution name: 24 hex characters of its SHA-256 (stable, no user
    text in the key, no collision between ``a/b`` and ``a_b``)."""
    if not name:
        raise ValueError("a contribution name cannot be empty")
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _job(job_id: str) -> str:
    if not _OBJECT_ID.match(job_id):
        raise ValueError(f"job id must be a 24-hex ObjectId string, got {job_id!r}")
    return job_id


@dataclass(frozen=True)
class Subjects:
    """Subject builder bound to one deployment's prefix."""

    prefix: str = "reelhouse"

    def __post_init__(self) -> None:
        if not _TOKEN.match(self.prefix):
            raise ValueError(f"subject prefix must be one NATS token, got {self.prefix!r}")

    def command(self, service: Service, verb: Verb) -> str:
        """Command hint to a service, e.g. ``reelhouse.cmd.recorder.start``."""
        service = _check("service", service, SERVICES)
        return f"{self.prefix}.cmd.{service}.{_check('verb', verb, VERBS)}"

    def commands(self, service: Service) -> str:
        """Wildcard for every command hint to ``service``."""
        return f"{self.prefix}.cmd.{_check('service', service, SERVICES)}.*"

    def probe(self) -> str:
        """The prober's request subject."""
        return f"{self.prefix}.req.prober.probe"

    def channel_check(self) -> str:
        """Check one channel now (fan-out: only the prober that watches it answers)."""
        return f"{self.prefix}.req.prober.channel_check"

    def janitor_cleanup(self) -> str:
        """The janitor's request subject: run a pass now, reply with its report."""
        return f"{self.prefix}.req.janitor.cleanup"

    def probe_service_name(self) -> str:
        """The prober's NATS micro service name (``$SRV.PING.<name>`` finds its replicas)."""
        return f"{self.prefix}-prober"

    def stats(self, module: Module, job_id: str) -> str:
        """Progress of one job."""
        return f"{self.prefix}.stats.{_check('module', module, MODULES)}.{_job(job_id)}"

    def all_stats(self, module: Module | None = None) -> str:
        """Wildcard for progress of every job (of one module)."""
        if module is None:
            return f"{self.prefix}.stats.>"
        return f"{self.prefix}.stats.{_check('module', module, MODULES)}.*"

    def event(self, module: Module, job_id: str, event: Event) -> str:
        """One event of one job."""
        return (
            f"{self.prefix}.evt.{_check('module', module, MODULES)}.{_job(job_id)}."
            f"{_check('event', event, EVENTS)}"
        )

    def events_of(self, module: Module, event: Event) -> str:
        """Wildcard for one event of every job of a module (``<p>.evt.recording.*.file_ready``)."""
        module = _check("module", module, MODULES)
        return f"{self.prefix}.evt.{module}.*.{_check('event', event, EVENTS)}"

    def storage_event(self, event: Event) -> str:
        """A storage-wide event of no job, e.g. ``reelhouse.evt.storage.disk_warning``."""
        return f"{self.prefix}.evt.storage.{_check('event', event, EVENTS)}"

    def system_event(self, event: Event) -> str:
        """A deployment-wide event of no job, e.g. ``reelhouse.evt.system.config_reloaded``."""
        return f"{self.prefix}.evt.system.{_check('event', event, EVENTS)}"

    def auth_event(self, event: Event) -> str:
        """An account event of no job, e.g. ``reelhouse.evt.auth.auth_refresh_reuse``."""
        return f"{self.prefix}.evt.auth.{_check('event', event, EVENTS)}"

    def system_shutdown(self) -> str:
        """The stack's graceful shutdown (:class:`~reelhouse.common.contracts.messages.
        SystemShutdown`); not an event (outside ``<p>.evt.>``)."""
        return f"{self.prefix}.sys.shutdown"

    def auth_changed(self) -> str:
        """Credentials changed (:class:`~reelhouse.common.contracts.messages.CredentialsChanged`):
        every API replica drops its cached token versions and API-key lookups. Not an event: it is
        not kept in the events stream (its subject is outside ``<p>.evt.>``)."""
        return f"{self.prefix}.auth.changed"

    def all_events(self) -> str:
        """Wildcard for every event (what the JetStream events stream captures)."""
        return f"{self.prefix}.evt.>"

    # -- the live plane's key-value bucket (docs/ARCHITECTURE.md §2) -------------------------------

    def live_bucket(self) -> str:
        """The live plane's key-value bucket, e.g. ``reelhouse_live``."""
        return f"{self.prefix.replace('-', '_')}_live"

    def live_node(self, service: str, node_id: str) -> str:
        """A node's heartbeat key ``nodes.<service>.<node>`` (a node id's dots become ``_``)."""
        return f"nodes.{_check('service', service, SERVICES)}.{_key_token(node_id)}"

    def live_nodes(self) -> str:
        """Every node key."""
        return "nodes.>"

    def live_owner(self, kind: str, job_id: str) -> str:
        """A job's owner key ``owners.<kind>.<job_id>``."""
        return f"owners.{_check('module', kind, MODULES)}.{_job(job_id)}"

    def live_owners(self, kind: str | None = None) -> str:
        """Every owner key (of one kind)."""
        if kind is None:
            return "owners.>"
        return f"owners.{_check('module', kind, MODULES)}.*"

    def live_upload(self, file_id: str) -> str:
        """The claim on one file's upload ``uploads.<file_id>`` (issue 24): its uploader."""
        return f"uploads.{_job(file_id)}"

    def live_upload_rate(self, storage_id: str, node_id: str) -> str:
        """One uploader's recent throughput to one storage target ``uploadrate.<storage>.<node>``
        (bytes a second, written every few seconds with a TTL; the API's metrics read them)."""
        return f"uploadrate.{_job(storage_id)}.{_key_token(node_id)}"

    def live_upload_rates(self) -> str:
        """Every uploader's throughput key (the API's ``/metrics`` sums them per target)."""
        return "uploadrate.*.*"

    def live_progress(self, kind: str, job_id: str) -> str:
        """A running job's last progress ``progress.<kind>.<job_id>``."""
        return f"progress.{_check('module', kind, MODULES)}.{_job(job_id)}"

    def live_all_progress(self) -> str:
        """Every progress key."""
        return "progress.>"

    def live_ingest(self, server_id: str, name: str) -> str:
        """A contribution's key ``ingest.<server_id>.<token>`` (present while it has a publisher
        or is held). ``token`` is a digest of the contribution's name: names are user text
        (slashes, dots) and never go into a key as they are."""
        return f"ingest.{_job(server_id)}.{ingest_token(name)}"

    def live_ingests(self, server_id: str | None = None) -> str:
        """Every contribution key (of one server)."""
        return "ingest.>" if server_id is None else f"ingest.{_job(server_id)}.*"

    def live_ingest_stats(self, server_id: str) -> str:
        """An ingest server's last statistics ``ingeststats.<server_id>`` (getStat reads it)."""
        return f"ingeststats.{_job(server_id)}"

    def live_all_ingest_stats(self) -> str:
        """Every ingest server's statistics key."""
        return "ingeststats.*"

    def live_ingest_relay(self) -> str:
        """The ingest node's relay announcement ``ingestrelay`` (where a restream's relay stage
        publishes; docs/INGEST.md "The relay server"), present while an ingest service runs."""
        return "ingestrelay"

    def live_relay(self, job_id: str) -> str:
        """A restream's relay credentials ``relays.<job_id>`` (the per-run SRT passphrase its
        relay stage publishes with; written by the restreamer, read by the ingest verdict)."""
        return f"relays.{_job(job_id)}"

    def live_rate(self, bucket: str, who: str, window_start: int) -> str:
        """A rate-limit counter ``rates.<bucket>.<who>.<window start>`` (``who`` hashed: it
        holds addresses and ids, never user text in the clear)."""
        digest = hashlib.sha256(who.encode()).hexdigest()[:24]
        return f"rates.{_key_token(bucket)}.{digest}.{int(window_start)}"

    def live_key_subject(self, key: str) -> str:
        """The JetStream subject a key of the live bucket is stored on (a plain publish there
        writes the key)."""
        return f"$KV.{self.live_bucket()}.{key}"

    def events_stream_name(self) -> str:
        """Name of the JetStream stream that keeps events by age."""
        return f"{self.prefix.upper().replace('-', '_')}_EVENTS"
