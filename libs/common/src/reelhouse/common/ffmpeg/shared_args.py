"""The argument pieces every FFmpeg job shares: the live input, an IMAGE overlay's input, and the
processing (stream selection, codecs, filters, encoder settings) of one output.

The recording and restream builders (:mod:`~reelhouse.common.ffmpeg.recording_args`,
:mod:`~reelhouse.common.ffmpeg.restream_args`) put these pieces between ``-hide_banner`` and their
own outputs; what each input type needs and which codecs go together come from
:mod:`~reelhouse.common.ffmpeg.capabilities`. Every function returns a list of arguments -- never
a shell string.

* Overlay text goes through ``drawtext`` with ``expansion=none`` (``%{...}`` stays literal) and is
  escaped for both parsing levels of a filtergraph (option value, then graph), so text cannot
  end the option, add options (``textfile=``) or add filters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Final

from reelhouse.common.contracts.media import (
    InputIn,
    ModifyAudio,
    ModifyVideo,
    Overlay,
    Transcoding,
)
from reelhouse.common.ffmpeg.capabilities import (
    ANALYZE_DURATION_US,
    IMAGE_PROTOCOL_WHITELIST,
    IO_TIMEOUT_US,
    LIVE_INPUT_OPTIONS,
    MUXERS,
    PROBE_SIZE_BYTES,
    PROTOCOL_WHITELIST,
    audio_encoder,
    check_processing,
    force_key_frames_s,
    is_set,
)

__all__ = [
    "FONT_CANDIDATES",
    "MAX_MUXING_QUEUE",
    "drawtext_filter",
    "escape_filter_value",
    "escape_filtergraph",
    "flatten_options",
    "image_input_args",
    "input_args",
    "overlay_font_file",
    "processing_args",
]

MAX_MUXING_QUEUE: Final = "1024"
"""Packets buffered per stream while another stream has not started yet (FFmpeg default: 128)."""

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
        *(() if fed else LIVE_INPUT_OPTIONS[inp.input_type]),
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


def _video_filters(
    transcoding: Transcoding, modify_video: ModifyVideo, overlay: Overlay
) -> list[str]:
    """The single-input video chain: modify_video, scale, fps, then a TEXT overlay.

    Scaling comes before the overlay so that its x/y are output pixels.
    """
    chain = list(_MODIFY_VIDEO_FILTERS[modify_video.type])
    width, height = transcoding.frame_width, transcoding.frame_height
    if is_set(width) or is_set(height):
        w = str(width) if is_set(width) else "-2"  # -2: keep the aspect ratio, even size
        h = str(height) if is_set(height) else "-2"
        chain.append(f"scale={w}:{h}")
    if is_set(transcoding.filter_fps):
        chain.append(f"fps={transcoding.filter_fps:g}")
    if overlay.type == "TEXT":
        chain.append(drawtext_filter(overlay))
    return chain


def _video_encoder_args(transcoding: Transcoding) -> list[str]:
    t = transcoding
    codec = t.video_transcoding
    args = ["-c:v", codec]
    peak = t.encoding_rate if is_set(t.encoding_rate) else None
    if is_set(t.crf):
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
    if is_set(t.gop):
        args += ["-g", str(t.gop)]
    if every := force_key_frames_s(t):
        args += ["-force_key_frames", f"expr:gte(t,n_forced*{every})", "-forced-idr", "1"]
    if is_set(t.cores):
        args += ["-threads", str(t.cores)]
    x265_params = ["log-level=error"]  # x265 logs every setting at info level
    if is_set(t.slices):
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


# -- output options -----------------------------------------------------------------------------


def flatten_options(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """``[("f", "flv"), ...]`` as ``["-f", "flv", ...]``: muxer options on the command line."""
    return [item for key, value in pairs for item in (f"-{key}", value)]
