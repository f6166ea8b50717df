"""One claimed restream job: its supervised FFmpeg, the state of each destination, stats, events.

One FFmpeg per job. One destination: a plain muxer; when it fails FFmpeg exits and the supervisor
restarts it with capped exponential backoff and jitter. Several destinations: the tee muxer with
every slave behind its own FIFO (``onfail=ignore``, ``attempt_recovery``), so a dead or slow
destination never stops the others and FFmpeg reopens it by itself every few seconds; the
destination's state is read from the FIFO's messages on stderr.

A destination that rejects the stream key (or SRT passphrase) is not hammered: a one-destination
job then waits ``auth_retry_s`` before the next attempt and a ``job_failed`` event says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import Any

from bson import ObjectId

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import (
    DestinationState,
    DestinationStatus,
    FailureKind,
    JobEvent,
    JobStats,
    ProcessData,
)
from reelhouse.common.contracts.restream import OutputIn, RestreamIn
from reelhouse.common.ffmpeg.command import build_restream_args
from reelhouse.common.ffmpeg.failures import FIFO_LINE, classify, classify_lines, mask_secret
from reelhouse.common.ffmpeg.progress import ProgressSnapshot
from reelhouse.common.ffmpeg.supervisor import (
    FFmpegSupervisor,
    SupervisorConfig,
    SupervisorState,
)
from reelhouse.common.files import restream_hls_dir
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.logging import get_logger
from reelhouse.common.subjects import Event
from reelhouse.restreamer.settings import RestreamerSettings

MODULE = "restream"
_STORED_ONLY = {"_id", "tenant", "entity_id", "created", "modified"}
_STATS_PERIOD_S = 1.0


def restream_config(
    job: dict[str, Any], input_doc: dict[str, Any], output_docs: list[dict[str, Any]]
) -> RestreamIn:
    """The stored job, input and outputs as the validated create body they came from."""
    fields = {
        k: v
        for k, v in job.items()
        if k in RestreamIn.model_fields and k not in ("input", "output")
    }
    inp = {k: v for k, v in input_doc.items() if k not in _STORED_ONLY}
    outs = [{k: v for k, v in o.items() if k not in _STORED_ONLY} for o in output_docs]
    return RestreamIn.model_validate({**fields, "input": inp, "output": outs})


def _shown_target(output: OutputIn, hls_dir: Path | None) -> str:
    if output.output_type == "OUTPUT_TYPE_HLS":
        return str(hls_dir / "index.m3u8") if hls_dir else "hls"
    if output.output_type == "OUTPUT_TYPE_DEV_NULL":
        return "null"
    return mask_secret(
        output.target_url,
        secret_path_segment=output.output_type == "OUTPUT_TYPE_OTHER_RTMP_URL",
    )


class RestreamRun:
    """Runs and watches one restream job while this node holds its lease."""

    def __init__(
        self,
        *,
        lease: Lease,
        config: RestreamIn,
        output_ids: list[ObjectId],
        leases: LeaseStore,
        bus: Bus,
        settings: RestreamerSettings,
        node_id: str,
    ) -> None:
        self.lease = lease
        self.job_id = str(lease.job_id)
        self.tenant = str(lease.doc.get("tenant", "default"))
        self.config = config
        self._leases = leases
        self._bus = bus
        self._settings = settings
        self._node_id = node_id
        self._log = get_logger("reelhouse.restreamer.job").bind(job_id=self.job_id)
        has_hls = any(o.output_type == "OUTPUT_TYPE_HLS" for o in config.output)
        self.hls_dir = restream_hls_dir(settings.storage_root, self.job_id) if has_hls else None
        self._multi = len(config.output) > 1
        self._targets = [o.target_url for o in config.output]
        self.destinations = [
            DestinationState(
                index=i,
                output_id=str(output_ids[i]) if i < len(output_ids) else None,
                output_type=o.output_type,
                target=_shown_target(o, self.hls_dir),
                state="starting",
            )
            for i, o in enumerate(config.output)
        ]
        self._fifo: dict[str, int] = {}  # FIFO context address -> destination index
        self._auth_failures = 0
        self._dirty = False  # a destination changed since runtime was last written
        self._last_stats = 0.0
        self._stopping = False
        self.supervisor = FFmpegSupervisor(
            self._argv,
            config=SupervisorConfig(
                ffmpeg_path=settings.ffmpeg_path,
                stale_timeout_s=settings.stale_timeout_s,
                backoff_initial_s=min(settings.retry_initial_s, settings.retry_max_s),
                backoff_max_s=settings.retry_max_s,
                graceful_stop_timeout_s=settings.stop_grace_s,
                stable_after_s=30.0,
                progress_period_s=settings.progress_period_s,
            ),
            on_state=self._on_state,
            on_progress=self._on_progress,
            on_exit=self._on_exit,
            on_stderr=self._on_stderr,
            env={"TZ": "UTC"},
            log=self._log,
        )
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        if self.hls_dir is not None:
            await asyncio.to_thread(self._fresh_hls_dir)
        self.supervisor.start()
        self._writer = asyncio.create_task(self._write_changes(), name="destinations")

    def _fresh_hls_dir(self) -> None:
        assert self.hls_dir is not None
        shutil.rmtree(self.hls_dir, ignore_errors=True)  # old segments of an earlier run
        self.hls_dir.mkdir(parents=True, exist_ok=True)

    async def stop(self, reason: str) -> None:
        """Stop FFmpeg gracefully, release the job."""
        if self._stopping:
            return
        self._stopping = True
        self._log.info("restream_stopping", reason=reason)
        state = await self.supervisor.stop(reason)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        try:
            await self._leases.release(self.lease.job_id)
        except Exception as exc:
            self._log.warning("lease_release_failed", error=str(exc))
        event: Event = "job_failed" if state is SupervisorState.FAILED else "job_stopped"
        await self._event(event, state=state.value, reason=reason)
        self._log.info("restream_stopped", state=state.value)

    def runtime_fields(self) -> dict[str, Any]:
        """What ``runtime`` says about this worker; written on state changes."""
        sup = self.supervisor
        fields: dict[str, Any] = {
            "state": sup.state.value,
            "pid": sup.pid,
            "restarts": sup.restarts,
            "last_error": sup.last_error,
            "destinations": [d.model_dump(mode="json") for d in self.destinations],
        }
        if sup.started_at is not None:
            fields["started_at"] = sup.started_at
        if sup.last_progress is not None:
            fields["last_progress"] = self._process_data(sup.last_progress).model_dump()
        return fields

    # -- FFmpeg arguments ---------------------------------------------------------------------

    def _argv(self) -> list[str]:
        # A new process: every destination starts again (a failed one is opened afresh).
        self._fifo.clear()
        for dest in self.destinations:
            if dest.state != "down" or dest.failure != "auth_rejected":
                self._set(dest.index, "starting", None, None)
        return build_restream_args(
            job=self.config, hls_dir=self.hls_dir, recovery_s=self._settings.destination_retry_s
        )

    # -- destination state --------------------------------------------------------------------

    def _set(
        self, index: int, state: DestinationStatus, failure: FailureKind | None, message: str | None
    ) -> None:
        dest = self.destinations[index]
        if dest.state == state and dest.failure == failure:
            if state in ("down", "retrying"):
                dest.retries += 1
                dest.message = message
            return
        retries = dest.retries + 1 if state in ("down", "retrying") else 0
        self.destinations[index] = dest.model_copy(
            update={
                "state": state, "failure": failure, "message": message, "since": utcnow(),
                "retries": retries,
            }
        )  # fmt: skip
        self._dirty = True
        log = self._log.warning if state == "down" else self._log.info
        log("destination_state", index=index, target=dest.target, state=state, failure=failure)

    def _index_of_target(self, text: str) -> int | None:
        for index, target in enumerate(self._targets):
            if target and text.startswith(target):
                return index
        return None

    def _on_stderr(self, line: str) -> None:
        if not self._multi:
            return
        match = FIFO_LINE.match(line.strip())
        if match is None:
            return
        ctx, message = match["ctx"], match["message"]
        self._log.debug("destination_message", fifo=ctx, message=message[:300])
        if message.startswith("Error opening "):
            rest = message[len("Error opening ") :]
            index = self._index_of_target(rest)
            if index is None:
                return
            self._fifo[ctx] = index
            self._set(index, "down", classify(rest) or "unknown", rest[-300:])
            return
        index = self._fifo.get(ctx)
        if index is None:
            return
        if message.startswith("Recovery successful"):
            self._set(index, "sending", None, None)
        elif message.startswith("Recovery failed"):
            self._set(index, "retrying", classify(message) or "unknown", message[-300:])
        elif "recovery attempt" not in message.lower():
            kind = classify(message)
            if kind is not None:
                self._set(index, "down", kind, message[-300:])

    async def _write_changes(self) -> None:
        """Write the runtime block when a destination changed (at most once a second)."""
        while True:
            await asyncio.sleep(1.0)
            if self._dirty and not self._stopping:
                self._dirty = False
                with contextlib.suppress(Exception):
                    await self._leases.hold(self.lease, self.runtime_fields())

    # -- supervisor hooks ---------------------------------------------------------------------

    async def _on_state(self, state: SupervisorState, reason: str) -> None:
        if state is SupervisorState.RUNNING:
            for dest in self.destinations:
                if dest.state == "starting":
                    self._set(dest.index, "sending", None, None)
            self._auth_failures = 0
        self._dirty = False
        try:
            await self._leases.hold(self.lease, self.runtime_fields())
        except Exception as exc:
            self._log.warning("runtime_write_failed", error=str(exc))
        if state is SupervisorState.RUNNING:
            await self._event("job_started", state=state.value, reason=reason)
        elif state is SupervisorState.RETRYING:
            await self._event(
                "job_retrying", state=state.value, reason=reason, restarts=self.supervisor.restarts
            )

    async def _on_progress(self, snapshot: ProgressSnapshot) -> None:
        now = time.monotonic()
        if now - self._last_stats < _STATS_PERIOD_S and not snapshot.ended:
            return
        self._last_stats = now
        stats = JobStats(
            module=MODULE,
            job_id=self.job_id,
            tenant=self.tenant,
            node=self._node_id,
            state=self.supervisor.state.value,
            processData=self._process_data(snapshot),
            destinations=self.destinations,
        )
        with contextlib.suppress(Exception):
            await self._bus.publish(self._bus.subjects.stats(MODULE, self.job_id), stats)

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._stopping or self.supervisor.state is SupervisorState.STOPPING:
            return
        # "<source url>: <error>" is FFmpeg's report of a failed input (open or read); then the
        # destinations just start again with it. ("Input #0, ... from '<url>':" is not one.)
        source = re.compile(re.escape(self.config.input.input_stream_url) + r"[^\s:]*: ")
        if any(source.match(line.strip()) for line in stderr_tail):
            return
        kind = classify_lines(stderr_tail)
        message = stderr_tail[-1][-300:] if stderr_tail else f"exited with code {returncode}"
        for dest in self.destinations:
            if dest.state in ("starting", "sending") and not self._multi:
                self._set(dest.index, "down", kind, message)
        if kind == "auth_rejected":
            self._auth_failures += 1
            self.supervisor.delay_next_retry(self._settings.auth_retry_s)
            if self._auth_failures == 1:
                await self._event(
                    "job_failed",
                    state="retrying",
                    reason=f"destination rejected the stream: {message}; retrying every "
                    f"{self._settings.auth_retry_s:g} s",
                )

    def _process_data(self, snapshot: ProgressSnapshot) -> ProcessData:
        return ProcessData(
            id=self.job_id,
            **snapshot.model_dump(include=set(ProcessData.model_fields) - {"id"}),
        )

    # -- events -------------------------------------------------------------------------------

    async def _event(self, event: Event, **fields: Any) -> None:
        message = JobEvent(
            type=event, module=MODULE, job_id=self.job_id, tenant=self.tenant,
            node=self._node_id, **fields,
        )  # fmt: skip
        try:
            await self._bus.publish(self._bus.subjects.event(MODULE, self.job_id, event), message)
        except Exception as exc:
            self._log.debug("event_not_published", event_name=event, error=str(exc))
