"""What FFmpeg can do: which protocols and live options each input type needs, which codecs and
containers go together, and the check that refuses what FFmpeg cannot run.

Pure data and checks, no argument lists: the contracts' validators
(:mod:`reelhouse.common.contracts.recording`, :mod:`reelhouse.common.contracts.restream`) call
:func:`check_processing`, and the argv builders (:mod:`reelhouse.common.ffmpeg.shared_args`,
:mod:`~reelhouse.common.ffmpeg.recording_args`, :mod:`~reelhouse.common.ffmpeg.restream_args`)
read the tables. This module imports no other part of ``ffmpeg``, and of the contracts only the
media blocks and the input types.

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
* Copied AAC from MPEG-TS (ADTS) into MP4 needs ``-bsf:a aac_adtstoasc`` (added by the
  processing arguments). The filter refuses any other codec, so copying non-AAC audio (MP2,
  AC-3, MP3) into MP4 fails -- such sources need ``audio_transcoding``. FLV inserts the filter by
  itself (and so stays usable for copied MP3).
* MP3 output always encodes with libmp3lame (a copied source track is AAC almost always), whatever
  ``audio_transcoding`` says (:func:`audio_encoder`).
"""

from __future__ import annotations

from typing import Final

from reelhouse.common.contracts.media import ModifyAudio, ModifyVideo, Overlay, Transcoding
from reelhouse.common.contracts.types import InputType

__all__ = [
    "ANALYZE_DURATION_US",
    "IMAGE_PROTOCOL_WHITELIST",
    "IO_TIMEOUT_US",
    "LIVE_INPUT_OPTIONS",
    "MUXERS",
    "PROBE_SIZE_BYTES",
    "PROBE_TOO_SHORT",
    "PROTOCOL_WHITELIST",
    "audio_encoder",
    "check_processing",
    "force_key_frames_s",
    "is_set",
]

# -- inputs -------------------------------------------------------------------------------------

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

LIVE_INPUT_OPTIONS: Final[dict[InputType, tuple[str, ...]]] = {
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
"""Options before ``-i`` that each input type needs to stay live: I/O timeouts (see the module
docstring for which option works where), playlist start, UDP buffering."""

# -- codecs and containers ----------------------------------------------------------------------

MUXERS: Final[dict[str, str]] = {
    "mp4": "mp4", "mkv": "matroska", "flv": "flv", "mpegts": "mpegts", "avi": "avi",
    "mp3": "mp3", "m3u8": "hls",
}  # fmt: skip
"""FFmpeg muxer of each output format."""

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

# -- what goes together ------------------------------------------------------------------------


def is_set(value: object) -> bool:
    """A number the dashboard filled in (not ``""``, not ``"Disabled"``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def force_key_frames_s(transcoding: Transcoding) -> int | None:
    """The forced keyframe interval in seconds, or None when ``force_key_frames`` is off."""
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
        if is_set(getattr(transcoding, field))
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
            if is_set(value) and value % 2:
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
