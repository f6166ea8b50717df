"""One claimed restream job: its supervised FFmpeg, the state of each destination, stats, events.

One FFmpeg per job. One destination: a plain muxer; when it fails FFmpeg exits and the supervisor
restarts it with capped exponential backoff and jitter. Several destinations: the tee muxer with
every slave behind its own FIFO (``onfail=ignore``, ``attempt_recovery``), so a dead or slow
destination never stops the others and FFmpeg reopens it by itself every few seconds; the
destination's state is read from the FIFO's messages on stderr. FFmpeg measures no size
through tee, so one more slave writes the stream to the supervisor's byte tap, whose count
gives ``total_size`` and ``bitrate``.

A destination that rejects the stream key (or SRT passphrase) is not hammered: a one-destination
job then waits ``auth_retry_s`` before the next attempt and a ``job_failed`` event says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
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
from reelhouse.common.ffmpeg.restream_args import build_restream_args
from reelhouse.common.ffmpeg.supervisor import (
    SupervisorState,
)
from reelhouse.common.files import restream_hls_dir
from reelhouse.common.jobs.lease import Lease, LeaseStore
from reelhouse.common.jobs.run import SupervisedRun
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
        self._auth_failures = 0
        self._dirty = False  # a destination changed since runtime was last written
        self._writer: asyncio.Task[None] | None = None
        super().__init__(lease=lease, leases=leases, bus=bus, settings=settings, node_id=node_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.hls_dir is not None:
            await asyncio.to_thread(self._fresh_hls_dir)
        self.supervisor.start()
        self._writer = asyncio.create_task(self._write_changes(), name="destinations")

    def _fresh_hls_dir(self) -> None:
        assert self.hls_dir is not None
        shutil.rmtree(self.hls_dir, ignore_errors=True)  # old segments of an earlier run
        self.hls_dir.mkdir(parents=True, exist_ok=True)

    async def _after_stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def _runtime_extra(self) -> dict[str, Any]:
        return {"destinations": [d.model_dump(mode="json") for d in self.destinations]}

    def _stats_fields(self) -> dict[str, Any]:
        return {"destinations": self.destinations}

    # -- FFmpeg arguments ---------------------------------------------------------------------

    async def _argv(self) -> list[str]:
        # A new process: every destination starts again (a failed one is opened afresh).
        self._fifo.clear()
        for dest in self.destinations:
            if dest.state != "down" or dest.failure != "auth_rejected":
                self._set(dest.index, "starting", None, None)
        source = self.config.input
        url = await self._source_url(source)
        self._input_url = url
        overlay = self.config.overlay
        if overlay.type == "IMAGE" and overlay.image_url:
            await self._target(overlay.image_url, role="input", field="overlay.image_url")
        for dest in self.config.output:
            # Checked, not pinned: destinations are told apart by their URLs in FFmpeg's
            # messages; TLS ones (rtmps) go through the filtering proxy all the same.
            if dest.output_stream_url and not dest.listen_port:
                field = "output_stream_url"
                await self._target(dest.output_stream_url, role="output", field=field)
        job = self.config.model_copy(
            update={"input": source.model_copy(update={"input_stream_url": url})}
        )
        return build_restream_args(
            job=job,
            hls_dir=self.hls_dir,
            recovery_s=self._restream_settings.destination_retry_s,
            probe_ms=self.probe_ms,
            # tee measures no size: one more slave, counted by the supervisor, gives the
            # job's total_size and bitrate (what it sends, once, as MPEG-TS).
            tap=self.supervisor.open_tap() if self._multi else None,
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
                await self.write_runtime()

    # -- supervisor hooks ---------------------------------------------------------------------

    async def _state_changed(self, state: SupervisorState) -> None:
        if state is SupervisorState.RUNNING:
            for dest in self.destinations:
                if dest.state == "starting":
                    self._set(dest.index, "sending", None, None)
            self._auth_failures = 0
        self._dirty = False  # the runtime block is written now

    async def _on_exit(self, returncode: int, stderr_tail: list[str]) -> None:
        if self._stopping or self.supervisor.state is SupervisorState.STOPPING:
            return
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
