"""The one FFmpeg command builder: a job's blocks in, FFmpeg's argument list out.

Used by the recorder now and the restreamer later. Every function returns a list of arguments --
never a shell string -- without the binary and without ``-progress`` (the supervisor runs
``ffmpeg -progress pipe:1 -nostats <args>``). A recording is::

    -hide_banner
    input_args(inp)                -protocol_whitelist <type's protocols> <live options> -i URL
    image_input_args(overlay)      IMAGE overlay only: -protocol_whitelist http,... -i IMAGE_URL
    processing_args(...)           -map, codecs, filters, encoder settings
    recording_output_args(...)     -n, muxer and muxer options, target

Facts this module relies on, checked against FFmpeg 5.1 (Debian) by
``tests/integration/test_ffmpeg_command_media.py`` or by hand where no test source exists:

* Whitelists. Nested opens (HLS/DASH segments, keys, redirects, RTMP's TCP socket) inherit the
  input's ``-protocol_whitelist``, so a playlist that lists ``file:///...`` fails with "Protocol
  'file' not on whitelist". SRT and RIST (libsrt, librist) open their own sockets: no ``udp``.
  RTSP is forced onto TCP (``-rtsp_transport tcp``, RTP interleaved in the RTSP connection), so it
  needs only ``tcp`` (``tls`` for rtsps). HLS needs ``crypto`` only for AES-128 playlists; neither
  HLS nor DASH needs the legacy ``hls:`` protocol.
* A silent source makes FFmpeg exit instead of hanging: ``-rw_timeout`` works for SRT, RTMP,
  HLS, DASH, RIST and the image input; UDP ignores it (its own ``timeout`` option overwrites it),
  so UDP gets ``-timeout``; the RTSP demuxer wants ``-timeout`` (``-rw_timeout`` hangs there); the
  RTP demuxer has no I/O timeout at all and rejects ``-rw_timeout`` -- the supervisor's stale
  timeout is the only guard for RTP.
* MP4 is fragmented (``+frag_keyframe+empty_moov+default_base_moof``) and every output uses
  ``-flush_packets 1``: without it the last fragment sits half in FFmpeg's I/O buffer when FFmpeg
  is SIGKILLed, ffprobe calls the file "partial" and reports a duration longer than what can be
  read. With it a SIGKILLed MP4 holds every complete fragment (one GOP each) and ffprobe's
  duration matches its packets. A killed MKV or AVI is readable but has no duration in its
  header (ffprobe: N/A); MPEG-TS, FLV and MP3 report one.
* Copied AAC from MPEG-TS (ADTS) into MP4 needs ``-bsf:a aac_adtstoasc``: with ``empty_moov``
  the header is written before the muxer would insert it, and FFmpeg 5.1 stops with "Malformed
  AAC bitstream". The filter refuses any other codec, so copying non-AAC audio (MP2, AC-3, MP3)
  into MP4 fails -- such sources need ``audio_transcoding``. FLV inserts the filter by itself
  (and so stays usable for copied MP3), hence no explicit filter there.
* MP3 output always encodes with libmp3lame (a copied source track is AAC almost always), whatever
  ``audio_transcoding`` says; ``-ar`` is applied only when ``audio_transcoding`` names a codec.
* Overlay text goes through ``drawtext`` with ``expansion=none`` (``%{...}`` stays literal) and is
  escaped for both parsing levels of a filtergraph (option value, then graph), so text cannot
  end the option, add options (``textfile=``) or add filters.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from reelhouse.common.contracts.media import (
    InputIn,
    ModifyAudio,
    ModifyVideo,
    Overlay,
    Transcoding,
)
from reelhouse.common.contracts.types import InputType

if TYPE_CHECKING:
    from reelhouse.common.contracts.recording import OutputFormat, RecordingIn
    from reelhouse.common.contracts.restream import OutputIn, RestreamIn

__all__ = [
    "HLS_SEGMENT_SECONDS",
    "IMAGE_PROTOCOL_WHITELIST",
    "IO_TIMEOUT_US",
    "MUXERS",
    "PROTOCOL_WHITELIST",
    "THUMBNAIL_FILE_NAME",
    "audio_encoder",
    "build_recording_args",
    "build_restream_args",
    "check_processing",
    "drawtext_filter",
    "escape_filter_value",
    "escape_filtergraph",
    "image_input_args",
    "input_args",
    "overlay_font_file",
    "processing_args",
    "recording_output_args",
    "restream_output_args",
    "thumbnail_output_args",
]

PROTOCOL_WHITELIST: Final[dict[InputType, tuple[str, ...]]] = {
    "INPUT_TYPE_SRT_URL": ("srt",),
    "INPUT_TYPE_RTMP_URL": ("rtmp", "rtmps", "tcp", "tls", "httpproxy"),
    "INPUT_TYPE_HLS_URL": ("http", "https", "tcp", "tls", "crypto", "httpproxy"),
    "INPUT_TYPE_MPEG_DASH_URL": ("http", "https", "tcp", "tls", "httpproxy"),
    "INPUT_TYPE_RTSP_URL": ("tcp", "tls", "httpproxy"),
    "INPUT_TYPE_RTP_URL": ("rtp", "udp"),
    "INPUT_TYPE_UDP_URL": ("udp",),
    "INPUT_TYPE_RIST_URL": ("rist",),
    "INPUT_TYPE_SRT_SERVER": ("srt",),  # the ingest fan-out (docs/INGEST.md), whatever the
    "INPUT_TYPE_RTMP_SERVER": ("srt",),  # contribution's own protocol
}
"""The only protocols FFmpeg may open for each input type (never ``file``, ``data``, ...).
``httpproxy`` is the CONNECT tunnel FFmpeg opens for TLS when ``http_proxy`` is set: every TLS
connection goes through the engine's filtering proxy (:mod:`reelhouse.common.netproxy`)."""

IMAGE_PROTOCOL_WHITELIST: Final = ("http", "https", "tcp", "tls", "httpproxy")
"""Protocols of an IMAGE overlay's picture (an http(s) URL)."""

IO_TIMEOUT_US: Final = 10_000_000
"""Socket I/O timeout, microseconds: a source silent this long makes FFmpeg exit (and restart)."""

ANALYZE_DURATION_US: Final = 2_000_000
"""Stream probing, microseconds: the default and the fallback of a live input's probe (a node's
``probe_ms`` may shorten it). H.264 in MPEG-TS always probes this long (measured: first
progress 2.5 s after connecting; 5.4 s with FFmpeg's default), and it must span one GOP so that
the SPS of a joined-mid-GOP stream is seen: 2 s covers GOPs up to 2 s."""

PROBE_TOO_SHORT: Final = "Could not find codec parameters"
"""What FFmpeg says when its probe ended before a stream's parameters were seen (for H.264: no
keyframe, so no SPS); a run that sees it probes for at least ``ANALYZE_DURATION_US`` next."""

PROBE_SIZE_BYTES: Final = 10_000_000
"""Most bytes read while probing: 2 s of a 40 Mbit/s feed, so the duration is what binds."""

UDP_FIFO_PACKETS: Final = 65_536
"""UDP receive FIFO, in 188-byte units (about 12 MB, several seconds of a 20 Mbit/s feed)."""

HLS_HOLD_COUNTERS: Final = 10
"""Playlist reloads without a new segment before an HLS input ends (about 5 target durations)."""

HLS_SEGMENT_SECONDS: Final = 6
"""Segment length of an m3u8 recording in infinity mode, seconds (Apple's recommendation)."""

MUXERS: Final[dict[str, str]] = {
    "mp4": "mp4", "mkv": "matroska", "flv": "flv", "mpegts": "mpegts", "avi": "avi",
    "mp3": "mp3", "m3u8": "hls",
}  # fmt: skip
"""FFmpeg muxer of each output format."""

MP4_MOVFLAGS: Final = "+frag_keyframe+empty_moov+default_base_moof"
"""Fragmented MP4: playable after a crash up to the last complete fragment (one GOP)."""

MAX_MUXING_QUEUE: Final = "1024"
"""Packets buffered per stream while another stream has not started yet (FFmpeg default: 128)."""

_LIVE_INPUT_OPTIONS: Final[dict[InputType, tuple[str, ...]]] = {
    "INPUT_TYPE_SRT_URL": ("-rw_timeout", str(IO_TIMEOUT_US)),
    # Never "-timeout" for RTMP: there it means "listen for a publisher" (-rtmp_listen 1).
    "INPUT_TYPE_RTMP_URL": ("-rw_timeout", str(IO_TIMEOUT_US)),
    # A live playlist starts at its newest segment: a recording starts now, and a backlog of
    # old segments would arrive as one burst (see recording_output_args on split names).
    "INPUT_TYPE_HLS_URL": (
        "-f", "hls", "-rw_timeout", str(IO_TIMEOUT_US), "-live_start_index", "-1",
        "-m3u8_hold_counters", str(HLS_HOLD_COUNTERS),
    ),
    "INPUT_TYPE_MPEG_DASH_URL": ("-f", "dash", "-rw_timeout", str(IO_TIMEOUT_US)),
    "INPUT_TYPE_RTSP_URL": ("-rtsp_transport", "tcp", "-timeout", str(IO_TIMEOUT_US)),
    "INPUT_TYPE_RTP_URL": ("-f", "rtp"),
    "INPUT_TYPE_UDP_URL": (
        "-timeout", str(IO_TIMEOUT_US), "-fifo_size", str(UDP_FIFO_PACKETS),
        "-overrun_nonfatal", "1",
    ),
    "INPUT_TYPE_RIST_URL": ("-rw_timeout", str(IO_TIMEOUT_US), "-overrun_nonfatal", "1"),
    # Ingest inputs: the fan-out holds a reader through a publisher gap (``-gap-hold``), so the
    # read timeout, above that hold, is in the reader URL the engine builds (``timeout=``).
    "INPUT_TYPE_SRT_SERVER": (),
    "INPUT_TYPE_RTMP_SERVER": (),
}  # fmt: skip

# -- codecs and containers ----------------------------------------------------------------------

_AUDIO_ENCODERS: Final = {
    "aac": "aac", "mp3": "libmp3lame", "libmp3lame": "libmp3lame", "opus": "libopus",
    "libopus": "libopus", "ac3": "ac3",
}  # fmt: skip
_AUDIO_CODEC_NAMES: Final = {"aac": "AAC", "libmp3lame": "MP3", "libopus": "Opus", "ac3": "AC-3"}
_VIDEO_CODEC_NAMES: Final = {"libx264": "H.264", "libx265": "H.265"}

# Encoders each container cannot hold, as FFmpeg 5.1 reports when writing the header.
_AUDIO_REFUSED_BY: Final[dict[str, frozenset[str]]] = {
    "flv": frozenset({"libopus", "ac3"}),
    "avi": frozenset({"libopus"}),
}
_VIDEO_REFUSED_BY: Final[dict[str, frozenset[str]]] = {"flv": frozenset({"libx265"})}
_SUGGEST_AUDIO: Final = {"flv": "aac or libmp3lame", "avi": "aac, libmp3lame or ac3"}

_SAMPLE_RATES: Final[dict[str, tuple[int, ...]]] = {
    "libmp3lame": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "libopus": (8000, 12000, 16000, 24000, 48000),
    "ac3": (32000, 44100, 48000),
}
_MAX_AUDIO_KBPS: Final = {"libmp3lame": 320, "libopus": 256, "ac3": 640}
_MAX_CHANNELS: Final = {"libmp3lame": 2, "ac3": 6}
_MAX_SELECTED_CHANNELS: Final = 8
_X265_TUNES: Final = frozenset({"grain", "zerolatency", "fastdecode", "animation"})
_X265_PIX_FMTS: Final = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le"})
_CHANNEL_LAYOUTS: Final = {
    1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1",
}  # fmt: skip

_MODIFY_VIDEO_FILTERS: Final[dict[str, tuple[str, ...]]] = {
    "DISABLED": (),
    "DEINTERLACE": ("yadif",),
    "FLIP_HORIZONTAL": ("hflip",),
    "FLIP_VERTICAL": ("vflip",),
    "ROTATE_90": ("transpose=clock",),
    "ROTATE_180": ("hflip", "vflip"),
    "ROTATE_270": ("transpose=cclock",),
    # hue=s=0 keeps yuv420p: a gray pix_fmt would make libx264 write a 4:0:0 stream that many
    # players cannot decode.
    "GRAYSCALE": ("hue=s=0",),
}

FONT_CANDIDATES: Final = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian/Ubuntu fonts-dejavu-core
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora, Alpine
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
"""Fonts tried for TEXT overlays, in order; without any, fontconfig's ``Sans`` is used."""


# -- inputs -------------------------------------------------------------------------------------


def input_args(inp: InputIn, *, probe_ms: int | None = None) -> list[str]:
    """The live input: its protocol whitelist, live options for its type, then ``-i URL``.

    Probing is bounded (``-analyzeduration``: ``probe_ms``, 2 s by default) so progress starts
    within about two seconds, and a
    source that goes silent makes FFmpeg exit (see the module docstring for which option does
    that per type). ``input_settings`` is not turned into options: nothing user-supplied reaches
    FFmpeg except the URL, whose scheme the contract has already checked against the type.
    """
    fed = inp.application == "IO_APPLICATION_STREAMLINK"
    if fed and not inp.input_stream_url.startswith("pipe:"):
        raise ValueError("a streamlink input is read from the pipe the recorder feeds")
    return [
        # Fed by streamlink: FFmpeg reads only the pipe the supervisor fills (open_feed).
        "-protocol_whitelist", "pipe" if fed else ",".join(PROTOCOL_WHITELIST[inp.input_type]),
        "-analyzeduration", str(ANALYZE_DURATION_US if probe_ms is None else probe_ms * 1000),
        "-probesize", str(PROBE_SIZE_BYTES),
        *(() if fed else _LIVE_INPUT_OPTIONS[inp.input_type]),
        "-i", inp.input_stream_url,
    ]  # fmt: skip


def image_input_args(overlay: Overlay) -> list[str]:
    """The second input of an IMAGE overlay (a PNG/JPEG over http(s)); ``[]`` otherwise.

    ``image2pipe`` only ever parses pictures (whatever the server sends is never demuxed as a
    playlist or a stream); the overlay filter repeats the last picture after the input ends.
    """
    if overlay.type != "IMAGE" or not overlay.image_url:
        return []
    return [
        "-protocol_whitelist", ",".join(IMAGE_PROTOCOL_WHITELIST),
        "-rw_timeout", str(IO_TIMEOUT_US),
        "-f", "image2pipe",
        "-i", overlay.image_url,
    ]  # fmt: skip


# -- filtergraph text ---------------------------------------------------------------------------

_ALWAYS_ESCAPED: Final = "\\' \t\n\r"


def _escape(value: str, specials: str) -> str:
    return "".join(f"\\{c}" if c in specials or c in _ALWAYS_ESCAPED else c for c in value)


def escape_filter_value(value: str) -> str:
    """Escape an option value inside one filter's arguments (``key=value:key=value``).

    FFmpeg's first quoting level: ``\\``, ``'``, ``:`` and ``=`` are escaped, and so is
    whitespace, which FFmpeg would otherwise trim at either end of the value.
    """
    return _escape(value, ":=")


def escape_filtergraph(filter_args: str) -> str:
    """Escape one filter's argument string for a filtergraph (``-vf``/``-filter_complex``).

    FFmpeg's second quoting level: ``\\``, ``'``, ``[``, ``]``, ``,`` and ``;`` (and whitespace).
    Apply it to the whole ``key=value:...`` string after escaping each value.
    """
    return _escape(filter_args, "[],;")


@functools.cache
def overlay_font_file() -> str | None:
    """The first of :data:`FONT_CANDIDATES` that exists, or None."""
    return next((path for path in FONT_CANDIDATES if os.path.isfile(path)), None)


def drawtext_filter(overlay: Overlay) -> str:
    """``drawtext=...`` drawing ``overlay.text`` literally at ``overlay.position``."""
    font = overlay_font_file()
    options = [
        ("fontfile", font) if font else ("font", "Sans"),
        ("expansion", "none"),
        ("text", overlay.text),
        ("fontsize", str(overlay.font_size)),
        ("fontcolor", overlay.font_color),
        ("x", str(overlay.position.x)),
        ("y", str(overlay.position.y)),
    ]
    args = ":".join(f"{key}={escape_filter_value(value)}" for key, value in options)
    return f"drawtext={escape_filtergraph(args)}"


# -- processing ---------------------------------------------------------------------------------


def _is_set(value: object) -> bool:
    """A number the dashboard filled in (not ``""``, not ``"Disabled"``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _force_key_frames_s(transcoding: Transcoding) -> int | None:
    value = transcoding.force_key_frames
    return value if isinstance(value, int) and value > 0 else None


def audio_encoder(transcoding: Transcoding, output_format: str) -> str | None:
    """The FFmpeg audio encoder used, or None for stream copy.

    An mp3 recording always encodes with libmp3lame: the source's track is almost always AAC,
    which an .mp3 file cannot hold, so ``audio_transcoding`` cannot mean "copy" there.
    """
    if output_format == "mp3":
        return "libmp3lame"
    if transcoding.audio_transcoding == "Disabled":
        return None
    return _AUDIO_ENCODERS[transcoding.audio_transcoding]


def _field_error(field: str, message: str) -> ValueError:
    return ValueError(f"@{field}: {message}")


def check_processing(
    *,
    transcoding: Transcoding,
    modify_audio: ModifyAudio,
    modify_video: ModifyVideo,
    overlay: Overlay,
    output_format: str,
) -> None:
    """Refuse combinations FFmpeg cannot run, naming the field to change.

    Raises ``ValueError("@<field.path>: <message>")``; the API turns it into a 400
    ``VALIDATION_ERROR`` for that field. Encoder settings that only apply when encoding
    (bitrate, preset, crf, ...) are ignored under stream copy rather than refused: the dashboard
    always sends them.
    """
    video = transcoding.video_transcoding
    encode_video = "set video_transcoding to libx264 or libx265"
    sized = [
        field
        for field in ("frame_width", "frame_height", "filter_fps")
        if _is_set(getattr(transcoding, field))
    ]

    if output_format == "mp3":
        audio_only = "mp3 is audio only"
        if video != "Disabled":
            raise _field_error("transcoding.video_transcoding", f"{audio_only}; set it to Disabled")
        if overlay.type != "DISABLED":
            raise _field_error("overlay.type", f"{audio_only}; set it to DISABLED")
        if modify_video.type != "DISABLED":
            raise _field_error("modify_video.type", f"{audio_only}; set it to DISABLED")
        if sized:
            raise _field_error(f"transcoding.{sized[0]}", f"{audio_only}; leave it empty")
        if modify_audio.type == "MUTE":
            raise _field_error(
                "modify_audio.type", "an mp3 recording needs audio; MUTE would leave nothing"
            )
    elif video == "Disabled":
        if overlay.type != "DISABLED":
            raise _field_error(
                "transcoding.video_transcoding", f"an overlay needs video encoding; {encode_video}"
            )
        if modify_video.type != "DISABLED":
            raise _field_error(
                "transcoding.video_transcoding",
                f"modify_video {modify_video.type} needs video encoding; {encode_video}",
            )
        if sized:
            what = "a frame rate" if sized[0] == "filter_fps" else "a frame size"
            raise _field_error(
                "transcoding.video_transcoding",
                f"{what} needs video encoding; {encode_video}, or leave {sized[0]} empty",
            )
    else:
        refused = _VIDEO_REFUSED_BY.get(output_format, frozenset())
        if video in refused:
            raise _field_error(
                "transcoding.video_transcoding",
                f"{output_format} cannot hold {_VIDEO_CODEC_NAMES[video]} ({video}); use "
                f"libx264, or an output_format such as mp4, mkv, mpegts or m3u8",
            )
        if video == "libx265" and transcoding.tune not in _X265_TUNES | {"Disabled"}:
            raise _field_error(
                "transcoding.tune",
                f"libx265 has no '{transcoding.tune}' tune; use one of "
                f"{', '.join(sorted(_X265_TUNES))} or Disabled",
            )
        if video == "libx265" and transcoding.pix_fmt not in _X265_PIX_FMTS | {"Disabled"}:
            raise _field_error(
                "transcoding.pix_fmt",
                f"libx265 cannot encode {transcoding.pix_fmt}; use one of "
                f"{', '.join(sorted(_X265_PIX_FMTS))}",
            )
        for field in ("frame_width", "frame_height"):
            value = getattr(transcoding, field)
            if _is_set(value) and value % 2:
                raise _field_error(
                    f"transcoding.{field}",
                    f"{value} is odd; H.264/H.265 in 4:2:0 need even sizes, e.g. {value + 1}",
                )

    encoder = audio_encoder(transcoding, output_format)
    if modify_audio.type == "SELECT_CHANNELS":
        if encoder is None:
            raise _field_error(
                "transcoding.audio_transcoding",
                "SELECT_CHANNELS needs audio encoding; set aac, libmp3lame, libopus or ac3",
            )
        limit = min(_MAX_CHANNELS.get(encoder, _MAX_SELECTED_CHANNELS), _MAX_SELECTED_CHANNELS)
        if len(modify_audio.channels) > limit:
            raise _field_error(
                "modify_audio.channel",
                f"{_AUDIO_CODEC_NAMES[encoder]} ({encoder}) takes at most {limit} channels; "
                f"select {limit} or fewer",
            )
    if encoder is None or modify_audio.type == "MUTE":
        return
    refused = _AUDIO_REFUSED_BY.get(output_format, frozenset())
    if encoder in refused:
        raise _field_error(
            "transcoding.audio_transcoding",
            f"{output_format} cannot hold {_AUDIO_CODEC_NAMES[encoder]} ({encoder}); use "
            f"{_SUGGEST_AUDIO[output_format]}",
        )
    rates = _SAMPLE_RATES.get(encoder)
    if (
        transcoding.audio_transcoding != "Disabled"
        and rates
        and (transcoding.sample_rate not in rates)
    ):
        raise _field_error(
            "transcoding.sample_rate",
            f"{encoder} cannot encode {transcoding.sample_rate} Hz; use one of "
            f"{', '.join(map(str, rates))}",
        )
    most = _MAX_AUDIO_KBPS.get(encoder)
    if most is not None and transcoding.output_audio_bitrate > most:
        raise _field_error(
            "transcoding.output_audio_bitrate",
            f"{encoder} takes at most {most} kbit/s; set {most} or less",
        )


def _video_filters(
    transcoding: Transcoding, modify_video: ModifyVideo, overlay: Overlay
) -> list[str]:
    """The single-input video chain: modify_video, scale, fps, then a TEXT overlay.

    Scaling comes before the overlay so that its x/y are output pixels.
    """
    chain = list(_MODIFY_VIDEO_FILTERS[modify_video.type])
    width, height = transcoding.frame_width, transcoding.frame_height
    if _is_set(width) or _is_set(height):
        w = str(width) if _is_set(width) else "-2"  # -2: keep the aspect ratio, even size
        h = str(height) if _is_set(height) else "-2"
        chain.append(f"scale={w}:{h}")
    if _is_set(transcoding.filter_fps):
        chain.append(f"fps={transcoding.filter_fps:g}")
    if overlay.type == "TEXT":
        chain.append(drawtext_filter(overlay))
    return chain


def _video_encoder_args(transcoding: Transcoding) -> list[str]:
    t = transcoding
    codec = t.video_transcoding
    args = ["-c:v", codec]
    peak = t.encoding_rate if _is_set(t.encoding_rate) else None
    if _is_set(t.crf):
        args += ["-crf", str(t.crf)]  # quality mode; encoding_rate caps it when given
    else:
        peak = peak or t.output_video_bitrate
        args += ["-b:v", f"{t.output_video_bitrate}k"]
    if peak:
        args += ["-maxrate", f"{peak}k", "-bufsize", f"{2 * peak}k"]
    if t.preset != "Disabled":
        args += ["-preset", t.preset]
    if t.tune != "Disabled":
        args += ["-tune", t.tune]
    if t.pix_fmt != "Disabled":
        args += ["-pix_fmt", t.pix_fmt]
    if _is_set(t.gop):
        args += ["-g", str(t.gop)]
    if every := _force_key_frames_s(t):
        args += ["-force_key_frames", f"expr:gte(t,n_forced*{every})", "-forced-idr", "1"]
    if _is_set(t.cores):
        args += ["-threads", str(t.cores)]
    x265_params = ["log-level=error"]  # x265 logs every setting at info level
    if _is_set(t.slices):
        if codec == "libx265":
            x265_params.append(f"slices={t.slices}")
        else:
            args += ["-slices", str(t.slices)]
    if codec == "libx265":
        args += ["-x265-params", ":".join(x265_params)]
    return args


def _audio_map(modify_audio: ModifyAudio, output_format: str) -> str:
    # An explicitly chosen track is required (no "?"): a missing track fails loudly with
    # "matches no streams" in last_error instead of recording silence. mp3 needs audio too.
    if modify_audio.type == "SELECT_TRACK":
        return f"0:a:{int(modify_audio.track)}"
    return "0:a:0" if output_format == "mp3" else "0:a:0?"


def _audio_args(
    transcoding: Transcoding, modify_audio: ModifyAudio, output_format: str
) -> list[str]:
    if modify_audio.type == "MUTE":
        return ["-an"]
    args = ["-map", _audio_map(modify_audio, output_format)]
    encoder = audio_encoder(transcoding, output_format)
    if encoder is None:
        args += ["-c:a", "copy"]
        if MUXERS.get(output_format) == "mp4":
            args += ["-bsf:a", "aac_adtstoasc"]  # ADTS AAC (from MPEG-TS) -> MP4
        return args
    args += ["-c:a", encoder, "-b:a", f"{transcoding.output_audio_bitrate}k"]
    if transcoding.audio_transcoding != "Disabled":
        args += ["-ar", str(transcoding.sample_rate)]
    if modify_audio.type == "SELECT_CHANNELS":
        channels = modify_audio.channels
        layout = _CHANNEL_LAYOUTS.get(len(channels), f"{len(channels)}c")
        routes = "|".join(f"c{out}=c{src - 1}" for out, src in enumerate(channels))
        args += ["-filter:a", f"pan={layout}|{routes}"]
    return args


def processing_args(
    *,
    transcoding: Transcoding,
    modify_audio: ModifyAudio,
    modify_video: ModifyVideo,
    overlay: Overlay,
    output_format: str,
    overlay_input_index: int = 1,
) -> list[str]:
    """Stream selection, codecs, filters and encoder settings for one output.

    Video: ``-map 0:v:0?`` (a source without video records audio only), copied when
    ``video_transcoding`` is ``"Disabled"``, else encoded with the filters of ``modify_video``,
    frame size, frame rate and overlay. An IMAGE overlay reads input ``overlay_input_index``
    (see :func:`image_input_args`) through ``-filter_complex``. Audio: ``-map 0:a:0?`` (or the
    selected track), copied or encoded, channels picked with ``pan``; MUTE drops it. mp3 is audio
    only. Raises ``ValueError`` for what :func:`check_processing` refuses.
    """
    check_processing(
        transcoding=transcoding,
        modify_audio=modify_audio,
        modify_video=modify_video,
        overlay=overlay,
        output_format=output_format,
    )
    args: list[str] = []
    if output_format == "mp3":
        args.append("-vn")
    elif transcoding.video_transcoding == "Disabled":
        args += ["-map", "0:v:0?", "-c:v", "copy"]
    else:
        chain = _video_filters(transcoding, modify_video, overlay)
        if overlay.type == "IMAGE":
            base = ",".join(chain) or "null"
            x, y = overlay.position.x, overlay.position.y
            graph = (
                f"[0:v:0]{base}[rh_base];"
                f"[rh_base][{overlay_input_index}:v:0]overlay=x={x}:y={y}:eof_action=repeat"
                "[rh_video]"
            )
            args += ["-filter_complex", graph, "-map", "[rh_video]"]
        else:
            args += ["-map", "0:v:0?"]
            if chain:
                args += ["-filter:v", ",".join(chain)]
        args += _video_encoder_args(transcoding)
    args += _audio_args(transcoding, modify_audio, output_format)
    args += ["-max_muxing_queue_size", MAX_MUXING_QUEUE]
    return args


# -- outputs ------------------------------------------------------------------------------------


def _flatten(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [item for key, value in pairs for item in (f"-{key}", value)]


def _muxer_options(output_format: str) -> list[tuple[str, str]]:
    options = [("movflags", MP4_MOVFLAGS)] if output_format == "mp4" else []
    # Every packet reaches the kernel at once: a SIGKILLed FFmpeg loses nothing it wrote.
    return [*options, ("flush_packets", "1")]


def _hls_segment_pattern(playlist: Path) -> Path:
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
            "-hls_segment_filename", str(_hls_segment_pattern(target)),
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
        args += ["-f", muxer, *_flatten(options)]
    return [*args, str(target)]


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
        and _force_key_frames_s(transcoding) is None
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


# -- restreams ----------------------------------------------------------------------------------

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
        return ["-y", "-f", muxer, *_flatten(options), target]
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
    # flv is the strictest container; the audio bitstream filter mp4 needs is never needed here.
    fmt = "flv" if "flv" in containers else "mpegts"
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
        *tags,
        *restream_output_args(outputs, hls_dir=hls_dir, recovery_s=recovery_s, tap=tap),
    ]
