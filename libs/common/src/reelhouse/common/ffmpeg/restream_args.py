"""A restream's FFmpeg arguments: the job in, the argument list after ``ffmpeg -progress pipe:1
-nostats`` out (used by the restreamer). A restream is::

    -hide_banner
    input_args(job.input)          from shared_args, as for a recording
    image_input_args(overlay)
    processing_args(...)           one processing for every destination
    [-tag:v 7 -tag:a 10]           several destinations with an flv one, stream copy
    restream_output_args(...)      one muxer, or the tee muxer with one FIFO per destination

With several destinations and an ingest service (docs/DECISIONS.md "Restreamer: one process per
destination"), the job is split instead: :func:`build_relay_args` (input, processing done once,
``-f mpegts`` into the ingest relay server) and one :func:`build_destination_args` per
destination (the relay's contribution from the fan-out, stream copy, one muxer).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from reelhouse.common.contracts.restream import OutputIn, RestreamIn
from reelhouse.common.ffmpeg.capabilities import audio_encoder
from reelhouse.common.ffmpeg.shared_args import (
    flatten_options,
    image_input_args,
    input_args,
    processing_args,
)

__all__ = [
    "DESTINATION_QUEUE_PACKETS",
    "DESTINATION_RECOVERY_S",
    "HLS_LIVE_LIST_SIZE",
    "HLS_LIVE_SEGMENT_SECONDS",
    "build_destination_args",
    "build_relay_args",
    "build_restream_args",
    "restream_output_args",
]

HLS_LIVE_SEGMENT_SECONDS: Final = 2
"""Segment length of a restream's monitoring HLS, seconds (short: it is watched live)."""

HLS_LIVE_LIST_SIZE: Final = 6
"""Segments a monitoring HLS playlist lists (older ones are deleted)."""

DESTINATION_RECOVERY_S: Final = 5
"""Seconds between FFmpeg's own attempts to reopen a failed destination of a multi-output job."""

DESTINATION_QUEUE_PACKETS: Final = 600
"""Packets a slow destination may lag behind before its packets are dropped (not the others)."""

_TEE_SPECIAL = re.compile(r"([\\'|\[\]])")


def _tee_escape(value: str) -> str:
    """Escape one tee slave target (``av_get_token`` splits on ``|`` and honours ``\\``)."""
    return _TEE_SPECIAL.sub(r"\\\1", value)


def _restream_muxer(
    output: OutputIn, hls_dir: Path | None
) -> tuple[str, list[tuple[str, str]], str]:
    """(muxer, muxer options, target) of one destination."""
    kind = output.output_type
    if kind == "OUTPUT_TYPE_OTHER_RTMP_URL":
        return "flv", [("flvflags", "no_duration_filesize")], output.target_url
    if kind in ("OUTPUT_TYPE_SRT_URL", "OUTPUT_TYPE_UDP_URL"):
        return "mpegts", [], output.target_url
    if kind == "OUTPUT_TYPE_HLS":
        if hls_dir is None:
            raise ValueError("an OUTPUT_TYPE_HLS destination needs hls_dir")
        return (
            "hls",
            [
                ("hls_time", str(HLS_LIVE_SEGMENT_SECONDS)),
                ("hls_list_size", str(HLS_LIVE_LIST_SIZE)),
                ("hls_flags", "delete_segments+independent_segments+temp_file+omit_endlist"),
                ("hls_segment_type", "mpegts"),
                ("hls_segment_filename", str(hls_dir / "segment-%05d.ts")),
            ],
            str(hls_dir / "index.m3u8"),
        )
    # OUTPUT_TYPE_DEV_NULL: the pipeline runs and is muxed (so size and bitrate are measured),
    # nothing is sent.
    return "mpegts", [], os.devnull


def restream_output_args(
    outputs: Sequence[OutputIn],
    *,
    hls_dir: Path | None = None,
    recovery_s: float = DESTINATION_RECOVERY_S,
    tap: str | None = None,
) -> list[str]:
    """The destinations, last: one muxer for one output, else the tee muxer.

    With several destinations every slave runs behind its own FIFO thread (``use_fifo``), so a
    slow or dead destination neither blocks nor stops the others (``onfail=ignore``), and FFmpeg
    reopens a failed one by itself every ``recovery_s`` seconds
    (``attempt_recovery``), starting again at a keyframe.

    ``tap`` (a ``pipe:<fd>`` URL from the supervisor's ``open_tap``) adds one more slave that
    writes the same packets as MPEG-TS there: FFmpeg measures no size through tee, so the job's
    size and bitrate are counted on it. One destination needs none (FFmpeg measures it).
    """
    if not outputs:
        raise ValueError("a restream needs at least one output")
    if len(outputs) == 1:
        muxer, options, target = _restream_muxer(outputs[0], hls_dir)
        # -y: the only files are our own (/dev/null, the monitoring HLS); never ask on stdin.
        return ["-y", "-f", muxer, *flatten_options(options), target]
    slaves = []
    for output in outputs:
        muxer, options, target = _restream_muxer(output, hls_dir)
        # Behind the FIFO only the muxer's generic options apply (flvflags is refused there).
        options = [(k, v) for k, v in options if k != "flvflags"]
        for key, value in options:
            if re.search(r"[:\\'|\[\]=]", value):
                raise ValueError(f"{key} value {value!r} cannot be passed through the tee muxer")
        spec = ":".join(f"{k}={v}" for k, v in [("f", muxer), ("onfail", "ignore"), *options])
        slaves.append(f"[{spec}]{_tee_escape(target)}")
    if tap is not None:
        slaves.append(f"[f=mpegts:onfail=ignore]{_tee_escape(tap)}")
    fifo = ":".join(
        f"{k}={v}"
        for k, v in (
            ("attempt_recovery", "1"),
            ("recover_any_error", "1"),
            ("recovery_wait_time", f"{recovery_s:g}"),
            ("max_recovery_attempts", "0"),
            ("restart_with_keyframe", "1"),
            ("drop_pkts_on_overflow", "1"),
            ("queue_size", str(DESTINATION_QUEUE_PACKETS)),
        )
    )
    return ["-y", "-f", "tee", "-use_fifo", "1", "-fifo_options", fifo, "|".join(slaves)]


def build_restream_args(
    *,
    job: RestreamIn,
    outputs: Sequence[OutputIn] | None = None,
    hls_dir: Path | None = None,
    recovery_s: float = DESTINATION_RECOVERY_S,
    probe_ms: int | None = None,
    tap: str | None = None,
) -> list[str]:
    """Everything after ``ffmpeg -progress pipe:1 -nostats`` for one restream process.

    ``outputs`` defaults to all of the job's destinations. The processing (copy or one encode)
    is shared by every destination, so it must fit each container (the contract checks that).
    ``tap``: see :func:`restream_output_args` (used with several destinations only).
    """
    outputs = list(job.output if outputs is None else outputs)
    containers = {o.container for o in outputs}
    fmt = _processing_format(outputs)
    tags: list[str] = []
    if len(outputs) > 1 and "flv" in containers:
        # Stream copy through tee keeps the source's codec tags (MPEG-TS: 27 for H.264), which
        # the flv muxer refuses ("Tag [27][0][0][0] incompatible"); give it FLV's own: H.264 is
        # 7, AAC is 10 (the only codecs RTMP destinations take). Encoders set no tag.
        if job.transcoding.video_transcoding == "Disabled":
            tags += ["-tag:v", "7"]
        if audio_encoder(job.transcoding, fmt) is None and job.modify_audio.type != "MUTE":
            tags += ["-tag:a", "10"]
    return [
        *_input_and_processing(job, fmt, probe_ms),
        *tags,
        *restream_output_args(outputs, hls_dir=hls_dir, recovery_s=recovery_s, tap=tap),
    ]


def _processing_format(outputs: Sequence[OutputIn]) -> str:
    # flv is the strictest container; the audio bitstream filter mp4 needs is never needed here.
    return "flv" if "flv" in {o.container for o in outputs} else "mpegts"


def _input_and_processing(job: RestreamIn, fmt: str, probe_ms: int | None) -> list[str]:
    """The job's input (and overlay image) and its processing (copy or the one encode), fitted
    to ``fmt``: what the one-process restream and the relay stage both begin with."""
    return [
        "-hide_banner",
        *input_args(job.input, probe_ms=probe_ms),
        *image_input_args(job.overlay),
        *processing_args(
            transcoding=job.transcoding,
            modify_audio=job.modify_audio,
            modify_video=job.modify_video,
            overlay=job.overlay,
            output_format=fmt,
        ),
    ]


def build_relay_args(
    *, job: RestreamIn, publish_url: str, probe_ms: int | None = None
) -> list[str]:
    """Everything after ``ffmpeg -progress pipe:1 -nostats`` for a restream's relay stage: the
    input, the job's processing (copy, or the one encode every destination shares, fitted to the
    strictest destination container) and ``-f mpegts`` into the ingest relay server."""
    return [
        *_input_and_processing(job, _processing_format(job.output), probe_ms),
        "-f", "mpegts", publish_url,
    ]  # fmt: skip


def build_destination_args(
    *,
    output: OutputIn,
    read_url: str,
    hls_dir: Path | None = None,
    probe_ms: int = 500,
    send_buffer_bytes: int = 0,
) -> list[str]:
    """Everything after ``ffmpeg -progress pipe:1 -nostats`` for one destination of a split
    restream: the relay's contribution from the ingest fan-out (it starts at a keyframe with
    PAT and PMT first, so a short probe finds every stream), copied into the destination's
    muxer. (The flv muxer takes the AAC from MPEG-TS as it is: it inserts ``aac_adtstoasc``.)

    ``send_buffer_bytes`` (RTMP, i.e. TCP, destinations; 0: the kernel's autotuning) caps the
    socket's send buffer: a receiver that stops reading then blocks FFmpeg's writes, and so its
    progress, after that much instead of after the autotuned ~4 MB (12 s of a 2.5 Mbit/s
    stream), so the stale watchdog sees the stall soon."""
    sndbuf: list[str] = []
    if send_buffer_bytes and output.output_type == "OUTPUT_TYPE_OTHER_RTMP_URL":
        sndbuf = ["-send_buffer_size", str(int(send_buffer_bytes))]
    out = restream_output_args([output], hls_dir=hls_dir)
    return [
        "-hide_banner",
        "-protocol_whitelist", "srt",
        "-probesize", "1000000",
        "-analyzeduration", str(int(probe_ms) * 1000),
        "-i", read_url,
        "-map", "0", "-c", "copy",
        *out[:-1], *sndbuf, out[-1],
    ]  # fmt: skip
