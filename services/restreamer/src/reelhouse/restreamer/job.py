"""One claimed restream job: its supervised FFmpeg(s), the state of each destination, stats, events.

One destination (``mode: single``): one FFmpeg, a plain muxer; when it fails FFmpeg exits and the
supervisor restarts it with capped exponential backoff and jitter.

Several destinations with an ingest service (``mode: split``, docs/DECISIONS.md "Restreamer: one
process per destination"): the job's own supervised FFmpeg is the **relay stage** (input,
processing done once, MPEG-TS pushed into the ingest node's relay server as contribution
``<job_id>`` with a per-run passphrase), and every destination is a :class:`DestinationRun`, an
FFmpeg of its own under its own supervisor that reads that contribution from the fan-out and
copies it to its target: its own state, progress (bitrate, fps), retries and stale watchdog, so
a dead or stalled destination is restarted alone and a source failure restarts only the relay
(the fan-out holds the destinations through the gap).

Several destinations and no ingest relay announced when the job starts (``mode: tee``, with
``mode_reason``): one FFmpeg with the tee muxer, every slave behind its own FIFO
(``onfail=ignore``, ``attempt_recovery``), as before; the destination's state is read from the
FIFO's messages on stderr, and one more slave writes the stream to the supervisor's byte tap,
whose count gives ``total_size`` and ``bitrate``.

A destination that rejects the stream key (or SRT passphrase) is not hammered: a one-destination
job then waits ``auth_retry_s`` before the next attempt and a ``job_failed`` event says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from bson import ObjectId

from reelhouse.common.bus import Bus
from reelhouse.common.contracts.base import utcnow
from reelhouse.common.contracts.messages import (
    DestinationState,
    DestinationStatus,
    FailureKind,
)
from reelhouse.common.contracts.restream import OutputIn, RestreamIn
from reelhouse.common.ffmpeg.failures import FIFO_LINE, classify, classify_lines, mask_secret
from reelhouse.common.ffmpeg.progress import ProgressSnapshot
from reelhouse.common.ffmpeg.restream_args import (
    build_destination_args,
    build_relay_args,
    build_restream_args,
)
from reelhouse.common.ffmpeg.supervisor import (
    FFmpegSupervisor,
    SupervisorConfig,
    SupervisorState,
)
from reelhouse.common.files import restream_hls_dir
from reelhouse.common.ingest import (
    RELAY_SERVER_ID,
    read_contribution,
    read_relay_announcement,
    relay_publish_url,
)
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.jobs.run import SupervisedRun
from reelhouse.common.subjects import Event
from reelhouse.restreamer.settings import RestreamerSettings

_STORED_ONLY = {"_id", "tenant", "entity_id", "created", "modified"}


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


class RestreamRun(SupervisedRun):
    """Runs and watches one restream job while this node holds its lease."""

    module = "restream"

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
        self.config = config
        self._input_url = config.input.input_stream_url  # as FFmpeg is given it (pinned)
        self._restream_settings = settings
        has_hls = any(o.output_type == "OUTPUT_TYPE_HLS" for o in config.output)
        job_id = str(lease.job_id)
        self.hls_dir = restream_hls_dir(settings.storage_root, job_id) if has_hls else None
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
        # single | split | tee (decided in start(): split needs an ingest relay)
        self.mode = "tee" if self._multi else "single"
        self.mode_reason: str | None = None
        self._relay_secret = secrets.token_hex(16)  # this run's SRT passphrase at the relay
        self._dests: list[DestinationRun] = []
        self._auth_failures = 0
        self._dirty = False  # a destination changed since runtime was last written
        self._writer: asyncio.Task[None] | None = None
        super().__init__(lease=lease, leases=leases, bus=bus, settings=settings, node_id=node_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.hls_dir is not None:
            await asyncio.to_thread(self._fresh_hls_dir)
        if self._multi:
            await self._choose_mode()
        self.supervisor.start()
        for dest in self._dests:
            dest.supervisor.start()
        self._writer = asyncio.create_task(self._write_changes(), name="destinations")

    async def _choose_mode(self) -> None:
        """Split through the ingest relay when an ingest service announces one, else tee (said
        in ``runtime.mode_reason`` and a warning: the destinations then share one process)."""
        live = self._leases.live
        announcement = await read_relay_announcement(live)
        if announcement is None:
            self.mode_reason = (
                "no ingest relay announced (the ingest service is not running, or its "
                "REELHOUSE_INGEST_RELAY_PORT is 0): one FFmpeg with tee for every destination; "
                "stop and start the job once the ingest service runs"
            )
        else:
            value = {"secret": self._relay_secret, "node": self._node_id}
            try:
                assert live.kv is not None
                await live.kv.put(self._bus.subjects.live_relay(self.job_id),
                                  json.dumps(value).encode())  # fmt: skip
            except Exception as exc:
                self.mode_reason = f"could not write the relay credentials ({exc}): tee"
            else:
                self.mode = "split"
                self._dests = [
                    DestinationRun(self, i, o, self._restream_settings)
                    for i, o in enumerate(self.config.output)
                ]
        if self.mode_reason:
            self._log.warning("restream_tee_fallback", reason=self.mode_reason)
        else:
            self._log.info("restream_split", destinations=len(self._dests),
                           relay=announcement.publish if announcement else None)  # fmt: skip

    async def stop(self, reason: str) -> None:
        """Destinations first (each alone, within its short grace), then the relay stage."""
        if self.stopping:
            return
        if self._dests:
            await asyncio.gather(*(d.stop(reason) for d in self._dests), return_exceptions=True)
        await super().stop(reason)

    async def relay_read_url(self, stopping: Any) -> str:
        """The fan-out URL of this job's relay contribution, once its relay stage publishes."""
        while True:
            live = await read_contribution(self._leases.live, RELAY_SERVER_ID, self.job_id)
            if live is not None and live.fanout and live.publisher:
                return live.reader_url(timeout_s=self._settings.ingest_gap_hold_s + 10.0)
            if stopping() or self._stopping:
                raise RuntimeError("stopped while waiting for the relay stage")
            await asyncio.sleep(self._settings.ingest_poll_s)

    def _fresh_hls_dir(self) -> None:
        assert self.hls_dir is not None
        shutil.rmtree(self.hls_dir, ignore_errors=True)  # old segments of an earlier run
        self.hls_dir.mkdir(parents=True, exist_ok=True)

    async def _after_stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        live = self._leases.live
        if self.mode == "split" and live.kv is not None:
            with contextlib.suppress(Exception):
                await live.kv.delete(self._bus.subjects.live_relay(self.job_id))

    def _runtime_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "destinations": [d.model_dump(mode="json") for d in self.destinations],
            "mode": self.mode,
        }
        if self.mode_reason:
            extra["mode_reason"] = self.mode_reason
        return extra

    def _stats_fields(self) -> dict[str, Any]:
        return {"destinations": self.destinations}

    # -- FFmpeg arguments ---------------------------------------------------------------------

    async def _argv(self) -> list[str]:
        if self.mode == "split":
            return await self._relay_argv()
        # A new process: every destination starts again (a failed one is opened afresh).
        self._fifo.clear()
        for dest in self.destinations:
            if dest.state != "down" or dest.failure != "auth_rejected":
                self._set(dest.index, "starting", None, None)
        job = await self._checked_input()
        for dest in self.config.output:
            # Checked, not pinned: destinations are told apart by their URLs in FFmpeg's
            # messages; TLS ones (rtmps) go through the filtering proxy all the same.
            if dest.output_stream_url and not dest.listen_port:
                field = "output_stream_url"
                await self._target(dest.output_stream_url, role="output", field=field)
        return build_restream_args(
            job=job,
            hls_dir=self.hls_dir,
            recovery_s=self._restream_settings.destination_retry_s,
            probe_ms=self.probe_ms,
            # tee measures no size: one more slave, counted by the supervisor, gives the
            # job's total_size and bitrate (what it sends, once, as MPEG-TS).
            tap=self.supervisor.open_tap() if self._multi else None,
        )

    async def _checked_input(self) -> RestreamIn:
        """The job with its input URL checked against the URL policy (and pinned where the
        policy pins it) and its overlay image checked: what every argv of this run reads."""
        source = self.config.input
        url = await self._source_url(source)
        self._input_url = url
        overlay = self.config.overlay
        if overlay.type == "IMAGE" and overlay.image_url:
            await self._target(overlay.image_url, role="input", field="overlay.image_url")
        return self.config.model_copy(
            update={"input": source.model_copy(update={"input_stream_url": url})}
        )

    async def _relay_argv(self) -> list[str]:
        """The relay stage: input and processing once, pushed into the ingest relay server."""
        job = await self._checked_input()
        announcement = await read_relay_announcement(self._leases.live)
        if announcement is None:
            raise RuntimeError(
                "ingest relay: no ingest service announces one now (is it running?); the "
                "destinations wait"
            )
        target = relay_publish_url(announcement, self.job_id, self._relay_secret)
        return build_relay_args(job=job, publish_url=target, probe_ms=self.probe_ms)

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

    def _progress_of(self, index: int, pid: int | None, snapshot: ProgressSnapshot) -> None:
        """A split destination's own numbers (not a state change: the stats carry them)."""
        self.destinations[index] = self.destinations[index].model_copy(
            update={"pid": pid, "fps": snapshot.fps, "bitrate": snapshot.bitrate,
                    "bitrate_kbits": snapshot.bitrate_kbits, "total_size": snapshot.total_size}
        )  # fmt: skip

    def _on_stderr(self, line: str) -> None:
        if self.mode != "tee":
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

    async def _event(self, event: Event, **fields: Any) -> None:
        """Destination changes not yet written go into the job first (the 1 s batch would write
        them after): a reader that acts on an event finds the state it reports in the job. Not
        while stopping: the job is released, and its last runtime block already written."""
        if self._dirty and not self._stopping:
            self._dirty = False
            await self.write_runtime()
        await super()._event(event, **fields)

    async def _write_changes(self) -> None:
        """Write the runtime block when a destination changed (at most once a second)."""
        while True:
            await asyncio.sleep(1.0)
            if self._dirty and not self._stopping:
                self._dirty = False
                await self.write_runtime()

    # -- supervisor hooks ---------------------------------------------------------------------

    async def _state_changed(self, state: SupervisorState) -> None:
        if state is SupervisorState.RUNNING and self.mode != "split":
            for dest in self.destinations:
                if dest.state == "starting":
                    self._set(dest.index, "sending", None, None)
            self._auth_failures = 0
        self._dirty = False  # the runtime block is written now

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._stopping or self.supervisor.state is SupervisorState.STOPPING:
            return
        if self.mode == "split":
            return  # the relay stage: the destinations are held by the fan-out meanwhile
        # "<source url>: <error>" is FFmpeg's report of a failed input (open or read); then the
        # destinations just start again with it. ("Input #0, ... from '<url>':" is not one.)
        source = re.compile(re.escape(self._input_url) + r"[^\s:]*: ")
        if any(source.match(line.strip()) for line in stderr_tail):
            return
        kind = classify_lines(stderr_tail)
        message = stderr_tail[-1][-300:] if stderr_tail else f"exited with code {returncode}"
        for dest in self.destinations:
            if dest.state in ("starting", "sending") and not self._multi:
                self._set(dest.index, "down", kind, message)
        if kind == "auth_rejected":
            self._auth_failures += 1
            self.supervisor.delay_next_retry(self._restream_settings.auth_retry_s)
            if self._auth_failures == 1:
                await self._event(
                    "job_failed",
                    state="retrying",
                    reason=f"destination rejected the stream: {message}; retrying every "
                    f"{self._restream_settings.auth_retry_s:g} s",
                )


STALE_REASON = "no progress for"
"""How the supervisor's watchdog words an exit it caused (``no progress for <n> s``)."""


class DestinationRun:
    """One destination of a split restream: its own FFmpeg under its own supervisor, reading the
    job's relay contribution from the ingest fan-out and copying it to the destination."""

    def __init__(
        self, run: RestreamRun, index: int, output: OutputIn, settings: RestreamerSettings
    ) -> None:
        self.run = run
        self.index = index
        self.output = output
        self._settings = settings
        self._stopping = False
        self._auth_failures = 0
        self._log = run._log.bind(destination=index)
        grace = min(settings.stop_grace_s, settings.destination_stop_grace_s)
        self.supervisor = FFmpegSupervisor(
            self._argv,
            config=SupervisorConfig(
                ffmpeg_path=settings.ffmpeg_path,
                stale_timeout_s=settings.destination_stale_s,
                backoff_initial_s=min(settings.retry_initial_s, settings.destination_retry_s),
                backoff_max_s=settings.destination_retry_s,
                sigint_after_s=min(0.5, grace),
                graceful_stop_timeout_s=grace,
                stable_after_s=30.0,
                progress_period_s=settings.progress_period_s,
            ),
            on_state=self._on_state,
            on_progress=self._on_progress,
            on_exit=self._on_exit,
            env={"TZ": "UTC", **run._proxy.env()},
            log=self._log,
        )

    async def stop(self, reason: str) -> None:
        self._stopping = True
        await self.supervisor.stop(reason)

    async def _argv(self) -> list[str]:
        url = await self.run.relay_read_url(lambda: self._stopping)
        output = self.output
        if output.output_stream_url and not output.listen_port:
            # Checked, not pinned (as under tee): an RTMP destination keeps its host name.
            field = f"output[{self.index}].output_stream_url"
            await self.run._target(output.output_stream_url, role="output", field=field)
        probe_ms = max(500, self.run._settings.ingest_probe_ms)
        return build_destination_args(
            output=output, read_url=url, hls_dir=self.run.hls_dir, probe_ms=probe_ms,
            send_buffer_bytes=self._settings.destination_send_buffer_bytes,
        )  # fmt: skip

    async def _on_progress(self, snapshot: ProgressSnapshot) -> None:
        self.run._progress_of(self.index, self.supervisor.pid, snapshot)

    async def _on_state(self, state: SupervisorState, reason: str) -> None:
        if self._stopping or self.run.stopping:
            return
        if state is SupervisorState.RUNNING:
            self._auth_failures = 0
            self.run._set(self.index, "sending", None, None)
        elif state is SupervisorState.RETRYING:
            self.run._progress_of(self.index, None, ProgressSnapshot(progress="continue"))
            tail = self.supervisor.stderr_tail
            kind: FailureKind
            if reason.startswith(STALE_REASON):
                kind = "stalled"
                message = (f"{reason.split(';')[0]}: the destination stopped taking media; "
                           "its FFmpeg alone was restarted")  # fmt: skip
            elif reason.startswith("could not build the command") or not tail:
                kind, message = "unknown", reason[-300:]
            else:
                kind, message = classify_lines(tail), tail[-1][-300:]
            self.run._set(self.index, "retrying", kind, message)
            if kind == "auth_rejected" and self._auth_failures == 1:  # said once a streak
                await self.run._event(
                    "job_failed",
                    state="retrying",
                    reason=f"destination {self.index} rejected the stream: {message}; "
                    f"retrying it every {self._settings.auth_retry_s:g} s (the others keep "
                    "sending)",
                )

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._stopping or self.run.stopping:
            return
        if classify_lines(stderr_tail) == "auth_rejected":
            self.supervisor.delay_next_retry(self._settings.auth_retry_s)
            self._auth_failures += 1
