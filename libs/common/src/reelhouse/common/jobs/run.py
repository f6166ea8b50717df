"""What every claimed job run has: its supervised FFmpeg, runtime block, stats, events, stop.

:class:`SupervisedRun` is the part recordings and restreams share; a subclass gives the FFmpeg
arguments (``_argv``, called before every start) and reacts to exits and progress through the
hooks below. It satisfies :class:`reelhouse.common.jobs.node.JobRun`.

**Armed before live** (issue 10): until the source has been live once (the supervisor's
``ever_ran``), a run whose attempts fail is ``waiting``, not ``retrying``: ``runtime.state`` says
``waiting``, the supervisor's backoff spaces the attempts, and no ``job_retrying`` event is
published for them. The first progress makes it ``running`` (``job_started``).

**Schedules**: a run stopped because its window closed moves the job's window on (a new
session, see :mod:`reelhouse.common.jobs.windows`) before it finishes up, so a recording's
seamless parts of that window are joined at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.media import InputIn
from reelhouse.common.contracts.messages import JobStats, ProcessData
from reelhouse.common.events import build_event
from reelhouse.common.ffmpeg.capabilities import ANALYZE_DURATION_US, PROBE_TOO_SHORT
from reelhouse.common.ffmpeg.progress import ProgressSnapshot
from reelhouse.common.ffmpeg.supervisor import (
    FFmpegSupervisor,
    SupervisorConfig,
    SupervisorState,
)
from reelhouse.common.jobs.ingest_input import IngestInput, is_ingest_input
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.logging import get_logger
from reelhouse.common.netpolicy import AddressRefused, Role, Unresolvable, checked_target
from reelhouse.common.netproxy import FilteringProxy
from reelhouse.common.settings import WorkerSettings
from reelhouse.common.subjects import Event, Module

__all__ = ["SupervisedRun", "input_admits_two_readers"]

TWO_READERS = {"INPUT_TYPE_HLS_URL", "INPUT_TYPE_MPEG_DASH_URL", "INPUT_TYPE_RTSP_URL",
               "INPUT_TYPE_RTMP_URL",
               "INPUT_TYPE_SRT_SERVER", "INPUT_TYPE_RTMP_SERVER"}  # fmt: skip
"""Input types whose sources serve any number of readers (servers that are pulled from, and the
engine's own ingest fan-out)."""


def input_admits_two_readers(source: Any) -> bool:
    """:attr:`SupervisedRun.admits_two_readers` for an input block (None: no)."""
    input_type = getattr(source, "input_type", None)
    if input_type in TWO_READERS:
        return True
    if input_type in ("INPUT_TYPE_UDP_URL", "INPUT_TYPE_RTP_URL"):
        host = urlsplit(str(getattr(source, "input_stream_url", "") or "")).hostname or ""
        try:
            return ipaddress.ip_address(host).is_multicast
        except ValueError:
            return False
    return False


STATS_PERIOD_S = 1.0
"""Most stats messages per job per second."""

FULL_PROBE_MS = ANALYZE_DURATION_US // 1000
"""The probe a run falls back to when the node's shorter one missed its source's parameters."""


class SupervisedRun:
    """One job's FFmpeg under supervision while this node owns the job."""

    module: Module

    def __init__(
        self,
        *,
        lease: Lease,
        leases: LeaseStore,
        bus: Bus,
        settings: WorkerSettings,
        node_id: str,
    ) -> None:
        self.lease = lease
        self.job_id = str(lease.job_id)
        self.tenant = str(lease.doc.get("tenant", "default"))
        self._leases = leases
        self._bus = bus
        self._settings = settings
        self._node_id = node_id
        self._log = get_logger(f"reelhouse.{self.module}.job").bind(job_id=self.job_id)
        self._last_stats = 0.0
        self._stopping = False
        self._probe_extended = False  # FFmpeg said the node's probe was too short for the source
        self._probe_retry = False  # ... during the current attempt: restart at once
        self._probe_retrying = False  # the restart after that attempt is under way
        self._ingest: IngestInput | None = None  # set by _source_url for an ingest input
        # The address policy: HTTP and TLS of this run's FFmpeg go through its own filtering
        # proxy; other URLs are handed over with their checked address (see _target).
        self._policy = settings.net_policy()
        self._proxy = FilteringProxy(self._policy)
        self.supervisor = FFmpegSupervisor(
            self._argv,
            config=SupervisorConfig(
                ffmpeg_path=settings.ffmpeg_path,
                # An ingest fan-out holds this reader, silent, through a publisher gap.
                stale_timeout_s=(
                    max(settings.stale_timeout_s, settings.ingest_gap_hold_s + 10.0)
                    if is_ingest_input(getattr(getattr(self, "config", None), "input", None))
                    else settings.stale_timeout_s
                ),
                backoff_initial_s=min(settings.retry_initial_s, settings.retry_max_s),
                backoff_max_s=settings.retry_max_s,
                graceful_stop_timeout_s=settings.stop_grace_s,
                stable_after_s=30.0,
                progress_period_s=settings.progress_period_s,
            ),
            on_state=self._on_state,
            on_progress=self._on_progress,
            on_exit=self._exited,
            on_stderr=self._stderr_line,
            env={"TZ": "UTC", **self._proxy.env()},
            log=self._log,
        )

    # -- what a subclass provides -------------------------------------------------------------

    async def _argv(self) -> Sequence[str]:
        """FFmpeg's arguments for the next (re)start."""
        raise NotImplementedError

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        """After every FFmpeg exit (before the supervisor decides what comes next)."""

    def _on_stderr(self, line: str) -> None:
        """Every stderr line FFmpeg writes."""

    async def _before_progress(self, snapshot: ProgressSnapshot) -> None:
        """Every progress block, before the (rate-limited) stats message."""

    def _stats_fields(self) -> dict[str, Any]:
        """Extra fields of this job's stats messages."""
        return {}

    def _runtime_extra(self) -> dict[str, Any]:
        """Extra fields of the runtime block."""
        return {}

    async def _after_stop(self) -> None:
        """Once FFmpeg has stopped, before the lease is released."""

    async def _publisher_gap(self, began: datetime, ended: datetime) -> None:
        """An ingest input's publisher was away from ``began`` to ``ended`` and came back within
        the fan-out's hold: FFmpeg read on, the media has no gap, the wall clock has."""

    async def _target(self, url: str, *, role: Role, field: str) -> str:
        """``url`` as FFmpeg gets it on this start: checked against the address policy at its
        resolved address, and pinned to it where FFmpeg would resolve the name itself.

        A refused or unresolvable URL raises: the supervisor reports "could not build the
        command" with the field and the class, and retries with backoff (the API refused such a
        URL already; this catches a name that resolves elsewhere now, or a changed policy).
        """
        await self._proxy.start()
        try:
            return await checked_target(self._policy, url, role=role)
        except AddressRefused as exc:
            self._log.warning("address_refused", field=field, detail=str(exc))
            raise RuntimeError(f"{field}: forbidden_address ({exc.reason} address)") from None
        except Unresolvable:
            raise RuntimeError(f"{field}: unreachable (the name does not resolve)") from None

    async def _source_url(self, source: InputIn) -> str:
        """The input URL FFmpeg reads on this start: a user's URL through :meth:`_target`; for an
        ingest input (docs/INGEST.md) the fan-out reader URL the engine builds, once the
        contribution has a publisher (until then the run is ``waiting`` and FFmpeg not started).
        """
        if not is_ingest_input(source):
            return await self._target(
                source.input_stream_url, role="input", field="input_stream_url"
            )
        if self._ingest is None:
            self._ingest = IngestInput(
                db=self._leases.jobs.database,
                live=self._leases.live,
                tenant=self.tenant,
                source=source,
                poll_s=self._settings.ingest_poll_s,
                gap_hold_s=self._settings.ingest_gap_hold_s,
            )
            try:
                await self._ingest.watch_gaps(self._bus, self._publisher_gap)
            except Exception as exc:  # NATS away: the gap goes unreported, the media is whole
                self._log.warning("publisher_gap_watch_failed", error=str(exc)[:200])

        async def waiting() -> None:
            self._log.info(f"{self.module}_waiting_for_publisher",
                           server_id=source.input_module_id,
                           stream=source.input_stream_id)  # fmt: skip
            await self.write_runtime()

        return await self._ingest.url(lambda: self._stopping, waiting)

    # -- probing -----------------------------------------------------------------------------

    @property
    def probe_ms(self) -> int:
        """How long FFmpeg's next start probes the input: the node's ``probe_ms`` (a runtime
        setting), or at least the full default once this run's source has shown it is too short.
        """
        probe = self._settings.probe_ms
        if self._probe_extended:
            return max(probe, FULL_PROBE_MS)
        if is_ingest_input(getattr(getattr(self, "config", None), "input", None)):
            # The ingest fan-out hands a new reader PAT, PMT and the current GOP from its
            # keyframe first: the codec parameters are in the first packets.
            return min(probe, self._settings.ingest_probe_ms)
        return probe

    def _stderr_line(self, line: str) -> None:
        if not self._probe_extended and PROBE_TOO_SHORT in line and self.probe_ms < FULL_PROBE_MS:
            # No keyframe (or no audio frame) within a short probe: whatever FFmpeg makes of it,
            # the next start probes fully, and an exit now is retried at once.
            self._log.warning("probe_extended", probe_ms=self.probe_ms, line=line.strip()[:200])
            self._probe_extended = self._probe_retry = True
        self._on_stderr(line)

    async def _exited(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._probe_retry:
            self._probe_retry = False
            if not self._stopping:
                self.supervisor.retry_now()
                self._probe_retrying = True  # no job_retrying event for it
        await self._on_exit(returncode, stderr_tail)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def admits_two_readers(self) -> bool:
        """Whether the job's source serves a second reader while this one still reads (pulled
        HTTP, HLS, DASH, RTSP, RTMP; UDP/RTP only from a multicast group): a drain may then
        start the job on a peer before stopping it here (make-before-break)."""
        return input_admits_two_readers(getattr(getattr(self, "config", None), "input", None))

    async def stop(self, reason: str) -> None:
        """Stop FFmpeg gracefully, finish up, release the job, say so."""
        if self._stopping:
            return
        self._stopping = True
        if self.window_closed():
            reason = "schedule window closed"
        self._log.info(f"{self.module}_stopping", reason=reason)
        state = await self.supervisor.stop(reason)
        await self._proxy.close()
        if self._ingest is not None:
            await self._ingest.close()
        if self.lease.doc.get("scheduled"):
            try:  # the closed window becomes the next one (a new session) before finishing up
                await self._leases.advance_windows(self.lease.job_id)
            except Exception as exc:
                self._log.warning("schedule_advance_failed", error=str(exc)[:200])
        with contextlib.suppress(Exception):
            await self._after_stop()
        try:
            await self._leases.release(self.lease)
        except Exception as exc:
            self._log.warning("release_failed", error=str(exc))
        await self._leases.live.clear_progress(self.module, self.job_id)
        event: Event = "job_failed" if state is SupervisorState.FAILED else "job_stopped"
        await self._event(event, state=state.value, reason=reason)
        self._log.info(f"{self.module}_stopped", state=state.value)

    def window_closed(self) -> bool:
        """Whether the job is scheduled and the window it was claimed in has closed."""
        stop = self.lease.doc.get("schedule_next_stop")
        if not self.lease.doc.get("scheduled") or not isinstance(stop, datetime):
            return False
        now = self._leases.clock()
        return (stop if stop.tzinfo else stop.replace(tzinfo=now.tzinfo)) <= now

    @property
    def waiting(self) -> bool:
        """Armed before live: the source has not been live yet and the first attempt failed."""
        if self._ingest is not None and self._ingest.waiting:
            return True  # an ingest input without a publisher: FFmpeg not started
        sup = self.supervisor
        if sup.ever_ran:
            return False
        if any("invalid data found" in line.lower() for line in sup.stderr_tail):
            return False  # the source is there but sends what FFmpeg cannot read: a failure
        return sup.state is SupervisorState.RETRYING or (
            sup.state is SupervisorState.STARTING and sup.restarts > 0
        )

    def presented_state(self) -> str:
        """``runtime.state``: the supervisor's state, or ``waiting`` (see :attr:`waiting`)."""
        return "waiting" if self.waiting else self.supervisor.state.value

    def runtime_fields(self) -> dict[str, Any]:
        """What ``runtime`` says about this worker; written on every state change.

        ``last_progress`` is the progress at the last state change; live numbers are in the live
        plane's ``progress.`` key (getStat, getById's runtime).
        """
        sup = self.supervisor
        fields: dict[str, Any] = {
            "state": self.presented_state(),
            "pid": sup.pid,
            "restarts": sup.restarts,
            "last_error": sup.last_error,
            **self._runtime_extra(),
        }
        if sup.started_at is not None:
            fields["started_at"] = sup.started_at
        if sup.last_progress is not None:
            fields["last_progress"] = self._process_data(sup.last_progress).model_dump()
        return fields

    async def write_runtime(self) -> None:
        """Write the runtime block now (while the document still names this node)."""
        try:
            await self._leases.hold(self.lease, self.runtime_fields())
        except Exception as exc:
            self._log.warning("runtime_write_failed", error=str(exc))

    # -- supervisor hooks ---------------------------------------------------------------------

    async def _on_state(self, state: SupervisorState, reason: str) -> None:
        await self._state_changed(state)
        if state is SupervisorState.STARTING and self.waiting:
            return  # another quiet attempt while waiting: nothing changed for anyone
        await self.write_runtime()
        if state is SupervisorState.RUNNING:
            await self._event("job_started", state=state.value, reason=reason)
        elif state is SupervisorState.RETRYING and self._probe_retrying:
            # The probe was too short for this source; the retry, at once, probes fully.
            self._probe_retrying = False
        elif state is SupervisorState.RETRYING and self.waiting:
            if self.supervisor.restarts == 0:  # said once, when it starts to wait
                self._log.info(f"{self.module}_waiting_for_source", reason=reason)
        elif state is SupervisorState.RETRYING:
            await self._event(
                "job_retrying", state=state.value, reason=reason, restarts=self.supervisor.restarts
            )

    async def _state_changed(self, state: SupervisorState) -> None:
        """Before the runtime block is written for a new state."""

    async def _on_progress(self, snapshot: ProgressSnapshot) -> None:
        await self._before_progress(snapshot)
        now = time.monotonic()
        if now - self._last_stats < STATS_PERIOD_S and not snapshot.ended:
            return
        self._last_stats = now
        stats = JobStats(
            module=self.module,
            job_id=self.job_id,
            tenant=self.tenant,
            node=self._node_id,
            state=self.supervisor.state.value,
            processData=self._process_data(snapshot),
            restarts=self.supervisor.restarts,
            pid=self.supervisor.pid,
            **self._stats_fields(),
        )
        payload = stats.model_dump_json().encode()
        with contextlib.suppress(Exception):
            await self._bus.nc.publish(self._bus.subjects.stats(self.module, self.job_id), payload)
        with contextlib.suppress(Exception):
            await self._leases.live.put_progress(self.module, self.job_id, payload)

    def _process_data(self, snapshot: ProgressSnapshot) -> ProcessData:
        return ProcessData(
            id=self.job_id,
            **snapshot.model_dump(include=set(ProcessData.model_fields) - {"id"}),
        )

    async def _event(self, event: Event, **fields: Any) -> None:
        message = build_event(
            event, module=self.module, job_id=self.job_id, tenant=self.tenant,
            node=self._node_id, channel_id=self.lease.doc.get("channel_id"), **fields,
        )  # fmt: skip
        try:
            await self._bus.publish(
                self._bus.subjects.event(self.module, self.job_id, event), message
            )
        except Exception as exc:
            self._log.debug("event_not_published", event_name=event, error=str(exc))
