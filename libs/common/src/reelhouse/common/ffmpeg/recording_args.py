"""A recording's FFmpeg arguments: a job's blocks in, the argument list after ``ffmpeg -progress
pipe:1 -nostats`` out (used by the recorder). A recording is::

    -hide_banner
    input_args(inp)                -protocol_whitelist <type's protocols> <live options> -i URL
    image_input_args(overlay)      IMAGE overlay only: -protocol_whitelist http,... -i IMAGE_URL
    processing_args(...)           -map, codecs, filters, encoder settings
    recording_output_args(...)     -n, muxer and muxer options, target
    thumbnail_output_args(...)     optional second output: the live JPEG

The first three come from :mod:`~reelhouse.common.ffmpeg.shared_args` (also used by restreams);
the outputs are this module's. Facts the outputs rely on, checked against FFmpeg 5.1 (Debian) by
``tests/integration/test_ffmpeg_command_media.py``:

* MP4 is fragmented (``+frag_keyframe+empty_moov+default_base_moof``) and every output uses
  ``-flush_packets 1``: without it the last fragment sits half in FFmpeg's I/O buffer when FFmpeg
  is SIGKILLed, ffprobe calls the file "partial" and reports a duration longer than what can be
  read. With it a SIGKILLed MP4 holds every complete fragment (one GOP each) and ffprobe's
  duration matches its packets. A killed MKV or AVI is readable but has no duration in its
  header (ffprobe: N/A); MPEG-TS, FLV and MP3 report one.
* With ``empty_moov`` the MP4 header is written before the muxer would insert
  ``aac_adtstoasc``, so copied ADTS AAC needs it explicitly (FFmpeg 5.1 otherwise stops with
  "Malformed AAC bitstream"); :func:`~reelhouse.common.ffmpeg.shared_args.processing_args` adds
  it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from reelhouse.common.contracts.media import InputIn
from reelhouse.common.contracts.recording import OutputFormat, RecordingIn
from reelhouse.common.ffmpeg.capabilities import MUXERS, force_key_frames_s
from reelhouse.common.ffmpeg.shared_args import (
    flatten_options,
    image_input_args,
    input_args,
    processing_args,
)

__all__ = [
    "HLS_SEGMENT_SECONDS",
    "MP4_MOVFLAGS",
    "THUMBNAIL_DECODE_ARGS",
    "THUMBNAIL_EVERY_S",
    "THUMBNAIL_FILE_NAME",
    "build_recording_args",
    "hls_segment_pattern",
    "recording_output_args",
    "thumbnail_output_args",
]

HLS_SEGMENT_SECONDS: Final = 6
"""Segment length of an m3u8 recording in infinity mode, seconds (Apple's recommendation)."""

MP4_MOVFLAGS: Final = "+frag_keyframe+empty_moov+default_base_moof"
"""Fragmented MP4: playable after a crash up to the last complete fragment (one GOP)."""


# -- the recording's output ---------------------------------------------------------------------


def _muxer_options(output_format: str) -> list[tuple[str, str]]:
    options = [("movflags", MP4_MOVFLAGS)] if output_format == "mp4" else []
    # Every packet reaches the kernel at once: a SIGKILLed FFmpeg loses nothing it wrote.
    return [*options, ("flush_packets", "1")]


def hls_segment_pattern(playlist: Path) -> Path:
    """The HLS muxer's segment names beside ``playlist``: ``<stem>-%05d.ts`` (a printf pattern,
    the number being the segment's media sequence)."""
    stem = playlist.stem.replace("%", "%%")  # the muxer expands %d in this name
    return playlist.with_name(f"{stem}-%05d.ts")


def recording_output_args(
    *,
    output_format: OutputFormat,
    target: Path,
    segment_seconds: int | None = None,
    segment_list: Path | None = None,
    hls_append: bool = False,
    align_to_clock: bool = False,
) -> list[str]:
    """The muxer, its options and ``target``, last.

    * one file (``segment_seconds`` None): ``-f <muxer>``; mp4 fragmented; ``-flush_packets 1``;
    * split (``segment_seconds``): the segment muxer with ``target`` as a strftime pattern,
      timestamps restarting in each segment, and with ``segment_list`` a CSV line
      (``name,start,end``) written when each segment is complete (trailer written and flushed);
    * m3u8: HLS with ``target`` as the playlist (type event, every segment stays listed) and
      segments ``<stem>-00000.ts`` next to it; ``segment_seconds`` is the HLS segment length.
      With ``hls_append`` an existing playlist is continued (``append_list``): its ENDLIST goes,
      the new segments follow an ``#EXT-X-DISCONTINUITY`` and keep counting (a seamless m3u8
      session). ``-n`` does not refuse the existing playlist (the HLS muxer opens its own files).
    * ``align_to_clock`` (split only): ``-segment_atclocktime 1`` cuts at the first keyframe after
      each wall-clock multiple of ``segment_seconds`` (FFmpeg's local time of day; the recorder
      runs it with ``TZ=UTC``), so the first segment is shorter. MPEG-TS segments then keep the
      continuous timestamps of the stream (``-reset_timestamps 0``: played or concatenated one
      after the other they form one timeline, as HLS does); the other containers restart at 0
      in each file, which they need to play from their start (an MP4 that starts at 600 s reads
      as 600 s of nothing first).

    ``-n`` makes FFmpeg refuse to overwrite an existing ``target`` (and never ask on stdin,
    which the supervisor uses for ``q``). Raises ``ValueError`` for a ``segment_list`` without
    the segment muxer.

    Split names have one-second resolution (strftime): when two cuts fall into the same
    wall-clock second, the later segment reuses the name and overwrites the earlier file. Cuts
    follow media time, and the first segment also holds the ~2 s probed before output starts, so
    with segments of 3 s or less the first one can close in the second it opened; a burst of
    buffered input (a source catching up) can do the same with any length shorter than the burst.
    """
    muxer = MUXERS[output_format]
    options = _muxer_options(output_format)
    args = ["-n"]
    if segment_seconds is not None and segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, not {segment_seconds}")
    if segment_list is not None and (output_format == "m3u8" or segment_seconds is None):
        raise ValueError("segment_list needs split mode (segment_seconds) and a non-HLS format")
    if output_format == "m3u8":
        args += [
            "-f", "hls",
            "-hls_time", str(segment_seconds or HLS_SEGMENT_SECONDS),
            "-hls_playlist_type", "event",
            "-hls_list_size", "0",
            "-hls_flags", "+independent_segments+program_date_time+temp_file"
            + ("+append_list" if hls_append else ""),
            "-hls_segment_type", "mpegts",
            "-hls_segment_filename", str(hls_segment_pattern(target)),
            "-flush_packets", "1",
        ]  # fmt: skip
    elif segment_seconds is not None:
        args += [
            "-f", "segment",
            "-segment_time", str(segment_seconds),
            "-segment_format", muxer,
            "-segment_format_options", ":".join(f"{k}={v}" for k, v in options),
            "-reset_timestamps", "0" if align_to_clock and output_format == "mpegts" else "1",
        ]  # fmt: skip
        if align_to_clock:
            args += ["-segment_atclocktime", "1"]
        if "%Y" in target.name:  # a strftime pattern; otherwise %05d numbers the segments
            args += ["-strftime", "1"]
        if segment_list is not None:
            args += ["-segment_list", str(segment_list), "-segment_list_type", "csv"]
    else:
        args += ["-f", muxer, *flatten_options(options)]
    return [*args, str(target)]


# -- the live thumbnail -------------------------------------------------------------------------

THUMBNAIL_EVERY_S: Final = 5
"""Seconds between two live thumbnails of a recording (the dashboard's picture per job)."""

THUMBNAIL_WIDTH: Final = 320
"""Width of a live thumbnail, pixels (height follows the aspect ratio, kept even)."""

THUMBNAIL_FILE_NAME: Final = ".thumb-%d.jpg"
"""The live thumbnail's file in a recording's job folder, literally (``%d`` included, see
:func:`thumbnail_output_args`); hidden, so file listings and the janitor skip it."""


THUMBNAIL_SELECT: Final = (
    f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{THUMBNAIL_EVERY_S})'"
)
"""The thumbnail's frames: the first one at once, then one every ``THUMBNAIL_EVERY_S``. (The
``fps`` filter would hold its first frame until it had seen half a period more, and FFmpeg
reports no progress until every output has written its header: 5 s to ``running``.)"""

THUMBNAIL_DECODE_ARGS: Final = ("-skip_frame:v", "nokey")
"""Input options of a recording whose video is copied: its decoder (there only for the
thumbnail) decodes keyframes alone. Never used when the video is encoded (every frame needed)."""


def thumbnail_output_args(thumbnail: Path) -> list[str]:
    """A second output: a small JPEG of the source's first video track, overwritten in place
    every :data:`THUMBNAIL_EVERY_S` seconds (``image2`` with ``-update 1``).

    It reads input 0 directly (never the recording's filters or overlay), so the source's video
    is decoded even when the recording itself is a stream copy. The JPEG is written to a
    temporary name and renamed, so a reader never sees half a picture.

    The name must hold a ``%d`` (FFmpeg 5.1, checked): the recording's global ``-n`` makes FFmpeg
    exit with "already exists" when an ``image2`` target without a number pattern exists -- every
    restart after the first picture -- while with ``-update 1`` the name is written literally.
    Raises ``ValueError`` for a name without ``%d``.
    """
    if "%d" not in thumbnail.name:
        raise ValueError(f"a thumbnail name needs a literal %d (see -n), not {thumbnail.name!r}")
    return [
        "-map", "0:v:0?",
        "-an", "-sn", "-dn",
        "-filter:v", f"{THUMBNAIL_SELECT},scale={THUMBNAIL_WIDTH}:-2",
        "-fps_mode", "vfr",
        "-c:v", "mjpeg", "-q:v", "5",
        "-f", "image2", "-update", "1", "-atomic_writing", "1",
        str(thumbnail),
    ]  # fmt: skip


# -- the whole recording ------------------------------------------------------------------------


def build_recording_args(
    *,
    inp: InputIn,
    job: RecordingIn,
    target: Path,
    segment_list: Path | None = None,
    thumbnail: Path | None = None,
    hls_append: bool = False,
    probe_ms: int | None = None,
) -> list[str]:
    """Everything after ``ffmpeg -progress pipe:1 -nostats`` for one recording part.

    In RECORDING_MODE_SPLIT_BY_TIME ``target`` is a strftime pattern (segment muxer) -- except
    for m3u8, where it is the playlist and the split length becomes the HLS segment length.
    When video is encoded and ``force_key_frames`` is off, keyframes are forced at the segment
    length so that segments can be cut on time. With ``thumbnail`` (and an output format that
    has video: not mp3) a second output keeps a live JPEG there (:func:`thumbnail_output_args`).
    """
    split = job.recording_mode == "RECORDING_MODE_SPLIT_BY_TIME"
    seconds = job.recording_mode_settings.total_seconds if split else None
    transcoding = job.transcoding
    cut_every = seconds or (HLS_SEGMENT_SECONDS if job.output_format == "m3u8" else None)
    if (
        cut_every
        and transcoding.video_transcoding != "Disabled"
        and force_key_frames_s(transcoding) is None
    ):
        transcoding = transcoding.model_copy(update={"force_key_frames": cut_every})
    thumbs = thumbnail is not None and job.output_format != "mp3"
    # A copied video is decoded only for the thumbnail: keyframes are enough (a 1080p30 H.264
    # stream costs ~20 % of a core to decode in full, its keyframes about 1 %).
    keyframes_only = thumbs and transcoding.video_transcoding == "Disabled"
    return [
        "-hide_banner",
        *(THUMBNAIL_DECODE_ARGS if keyframes_only else ()),
        *input_args(inp, probe_ms=probe_ms),
        *image_input_args(job.overlay),
        *processing_args(
            transcoding=transcoding,
            modify_audio=job.modify_audio,
            modify_video=job.modify_video,
            overlay=job.overlay,
            output_format=job.output_format,
        ),
        *recording_output_args(
            output_format=job.output_format,
            target=target,
            segment_seconds=seconds,
            segment_list=segment_list,
            hls_append=hls_append,
            align_to_clock=split and job.recording_mode_settings.align_to_clock,
        ),
        *(thumbnail_output_args(thumbnail) if thumbs and thumbnail else []),
    ]
