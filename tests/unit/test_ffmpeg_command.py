"""The FFmpeg argv builders (ffmpeg.shared_args, ffmpeg.recording_args) and the capability
check (ffmpeg.capabilities): argument lists for every input, output, processing choice.

What FFmpeg does with these arguments is checked in
``tests/integration/test_ffmpeg_command_media.py``; here the lists themselves are checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError
from support.seeds import recording_payload, seed_payloads

from reelhouse.common.contracts.media import (
    InputIn,
    ModifyAudio,
    ModifyVideo,
    Overlay,
    Transcoding,
)
from reelhouse.common.contracts.recording import FILE_EXTENSIONS, RecordingIn
from reelhouse.common.contracts.types import INGEST_INPUT_TYPES, INPUT_SCHEMES, InputType
from reelhouse.common.ffmpeg.capabilities import (
    IO_TIMEOUT_US,
    MUXERS,
    PROTOCOL_WHITELIST,
    check_processing,
)
from reelhouse.common.ffmpeg.recording_args import (
    HLS_SEGMENT_SECONDS,
    build_recording_args,
    recording_output_args,
)
from reelhouse.common.ffmpeg.shared_args import (
    drawtext_filter,
    image_input_args,
    input_args,
    processing_args,
)

ALL_INPUT_TYPES: tuple[InputType, ...] = get_args(InputType)
ALL_FORMATS = ("mp4", "mkv", "flv", "mpegts", "avi", "mp3", "m3u8")
LOCAL_PROTOCOLS = {"file", "pipe", "fd", "data", "concat", "concatf", "subfile", "cache", "async"}
SEED_TRANSCODING = recording_payload(0)["transcoding"]  # audio aac 128k 44100, video copy


def url_for(input_type: InputType) -> str:
    return f"{INPUT_SCHEMES[input_type][0]}://127.0.0.1:9000/live"


def make_input(input_type: InputType = "INPUT_TYPE_SRT_URL") -> InputIn:
    if input_type in INGEST_INPUT_TYPES:  # the run hands over the fan-out URL it built
        ids = {"input_module_id": "a" * 24, "input_stream_id": "b" * 24}
        built = InputIn(input_type=input_type, **ids)
        return built.model_copy(update={"input_stream_url": url_for("INPUT_TYPE_SRT_URL")})
    return InputIn(input_type=input_type, input_stream_url=url_for(input_type))


def option(args: list[str], name: str) -> str:
    """The value after the (single) option ``name``."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def options(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def processing(output_format: str = "mp4", **blocks: Any) -> list[str]:
    """processing_args with the seed's blocks, each replaceable by a dict of changes."""
    transcoding = Transcoding.model_validate({**SEED_TRANSCODING, **blocks.pop("transcoding", {})})
    return processing_args(
        transcoding=transcoding,
        modify_audio=ModifyAudio.model_validate(blocks.pop("modify_audio", {})),
        modify_video=ModifyVideo.model_validate(blocks.pop("modify_video", {})),
        overlay=Overlay.model_validate(blocks.pop("overlay", {})),
        output_format=output_format,
        **blocks,
    )


def recording(index: int = 0, **changes: Any) -> RecordingIn:
    return RecordingIn.model_validate(recording_payload(index, **changes))


X264 = {"video_transcoding": "libx264"}


# -- inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_type", ALL_INPUT_TYPES)
def test_every_input_is_whitelisted_and_ends_with_its_url(input_type):
    inp = make_input(input_type)
    args = input_args(inp)

    whitelist = option(args, "-protocol_whitelist").split(",")
    assert whitelist == list(PROTOCOL_WHITELIST[input_type])
    assert not LOCAL_PROTOCOLS & set(whitelist)
    assert args.index("-protocol_whitelist") < args.index("-i")
    assert args[-2:] == ["-i", inp.input_stream_url]
    assert option(args, "-analyzeduration") == "2000000"
    assert all(isinstance(a, str) for a in args)


def test_whitelists_hold_only_what_each_protocol_needs():
    assert PROTOCOL_WHITELIST["INPUT_TYPE_SRT_URL"] == ("srt",)  # libsrt has its own sockets
    assert PROTOCOL_WHITELIST["INPUT_TYPE_RIST_URL"] == ("rist",)  # so has librist
    assert PROTOCOL_WHITELIST["INPUT_TYPE_UDP_URL"] == ("udp",)
    assert set(PROTOCOL_WHITELIST["INPUT_TYPE_RTP_URL"]) == {"rtp", "udp"}
    # httpproxy: FFmpeg's CONNECT tunnel for TLS through the engine's filtering proxy.
    tls = {"tcp", "tls", "httpproxy"}
    assert set(PROTOCOL_WHITELIST["INPUT_TYPE_RTMP_URL"]) == {"rtmp", "rtmps", *tls}
    assert set(PROTOCOL_WHITELIST["INPUT_TYPE_RTSP_URL"]) == tls  # RTP interleaved
    hls = {"http", "https", "crypto", *tls}  # crypto: AES-128 playlists
    assert set(PROTOCOL_WHITELIST["INPUT_TYPE_HLS_URL"]) == hls
    assert set(PROTOCOL_WHITELIST["INPUT_TYPE_MPEG_DASH_URL"]) == {"http", "https", *tls}
    assert set(PROTOCOL_WHITELIST) == set(ALL_INPUT_TYPES)


@pytest.mark.parametrize(
    ("input_type", "expected"),
    [
        ("INPUT_TYPE_SRT_URL", {"-rw_timeout": str(IO_TIMEOUT_US)}),
        ("INPUT_TYPE_RTMP_URL", {"-rw_timeout": str(IO_TIMEOUT_US)}),
        ("INPUT_TYPE_RIST_URL", {"-rw_timeout": str(IO_TIMEOUT_US), "-overrun_nonfatal": "1"}),
        (
            "INPUT_TYPE_HLS_URL",
            {"-f": "hls", "-rw_timeout": str(IO_TIMEOUT_US), "-live_start_index": "-1",
             "-m3u8_hold_counters": "10"},
        ),
        ("INPUT_TYPE_MPEG_DASH_URL", {"-f": "dash", "-rw_timeout": str(IO_TIMEOUT_US)}),
        ("INPUT_TYPE_RTSP_URL", {"-rtsp_transport": "tcp", "-timeout": str(IO_TIMEOUT_US)}),
        (
            "INPUT_TYPE_UDP_URL",
            {"-timeout": str(IO_TIMEOUT_US), "-fifo_size": "65536", "-overrun_nonfatal": "1"},
        ),
        ("INPUT_TYPE_RTP_URL", {"-f": "rtp"}),
    ],
)  # fmt: skip
def test_live_options_per_input_type(input_type, expected):
    args = input_args(make_input(input_type))
    for name, value in expected.items():
        assert option(args, name) == value, name
    # UDP overwrites rw_timeout with its own timeout, RTSP hangs with it, RTP rejects it.
    if input_type in ("INPUT_TYPE_UDP_URL", "INPUT_TYPE_RTSP_URL", "INPUT_TYPE_RTP_URL"):
        assert "-rw_timeout" not in args
    if input_type == "INPUT_TYPE_RTMP_URL":
        assert "-timeout" not in args  # for RTMP it means "listen for a publisher"


def test_probe_length_is_the_nodes_setting_in_both_job_kinds():
    inp = make_input("INPUT_TYPE_SRT_URL")
    assert option(input_args(inp, probe_ms=400), "-analyzeduration") == "400000"
    job = RecordingIn.model_validate(recording_payload())
    args = build_recording_args(inp=job.input, job=job, target=Path("/r/a.mp4"), probe_ms=750)
    assert option(args, "-analyzeduration") == "750000"
    assert option(args, "-probesize") == "10000000"  # the duration binds, not the size


def test_input_settings_never_become_options():
    inp = InputIn(
        input_type="INPUT_TYPE_SRT_URL",
        input_stream_url="srt://127.0.0.1:9000",
        input_settings={"protocol_whitelist": "file", "i": "/etc/passwd"},
    )
    args = input_args(inp)
    assert "file" not in " ".join(args)
    assert "/etc/passwd" not in args


# -- outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_each_output_format_writes_its_muxer_to_the_target(fmt, tmp_path):
    target = tmp_path / f"rec.{FILE_EXTENSIONS[fmt]}"
    args = recording_output_args(output_format=fmt, target=target)

    assert args[-1] == str(target)
    assert args[0] == "-n"  # never overwrite, never ask on stdin
    assert option(args, "-f") == MUXERS[fmt]
    assert option(args, "-flush_packets") == "1"
    assert "-y" not in args
    if fmt == "mp4":
        assert option(args, "-movflags") == "+frag_keyframe+empty_moov+default_base_moof"
    else:
        assert "-movflags" not in args


def test_m3u8_writes_an_event_playlist_with_segments_named_after_it(tmp_path):
    target = tmp_path / "show-2026-03-24_12-00-00.m3u8"
    args = recording_output_args(output_format="m3u8", target=target)

    assert option(args, "-hls_playlist_type") == "event"
    assert option(args, "-hls_list_size") == "0"
    assert option(args, "-hls_time") == str(HLS_SEGMENT_SECONDS)
    assert option(args, "-hls_segment_filename") == str(
        tmp_path / "show-2026-03-24_12-00-00-%05d.ts"
    )
    assert "temp_file" in option(args, "-hls_flags")


def test_m3u8_segment_pattern_keeps_a_percent_in_the_playlist_name(tmp_path):
    args = recording_output_args(output_format="m3u8", target=tmp_path / "100%.m3u8")
    assert option(args, "-hls_segment_filename") == str(tmp_path / "100%%-%05d.ts")


@pytest.mark.parametrize("fmt", [f for f in ALL_FORMATS if f != "m3u8"])
def test_split_mode_uses_the_segment_muxer_with_a_csv_list(fmt, tmp_path):
    target = tmp_path / f"show-%Y-%m-%d_%H-%M-%S.{FILE_EXTENSIONS[fmt]}"
    listing = tmp_path / ".part.csv"
    args = recording_output_args(
        output_format=fmt, target=target, segment_seconds=600, segment_list=listing
    )

    assert args[-1] == str(target)
    assert option(args, "-f") == "segment"
    assert option(args, "-segment_time") == "600"
    assert option(args, "-reset_timestamps") == "1"
    assert option(args, "-strftime") == "1"  # a strftime pattern: names are expanded
    numbered = recording_output_args(
        output_format=fmt, target=tmp_path / f".seg-%05d.{FILE_EXTENSIONS[fmt]}", segment_seconds=6
    )
    assert "-strftime" not in numbered  # %05d numbers the segments instead
    assert option(args, "-segment_format") == MUXERS[fmt]
    assert option(args, "-segment_list") == str(listing)
    assert option(args, "-segment_list_type") == "csv"
    format_options = option(args, "-segment_format_options").split(":")
    assert "flush_packets=1" in format_options
    if fmt == "mp4":
        assert "movflags=+frag_keyframe+empty_moov+default_base_moof" in format_options


def test_split_mode_for_m3u8_sets_the_hls_segment_length(tmp_path):
    args = recording_output_args(
        output_format="m3u8", target=tmp_path / "a.m3u8", segment_seconds=10
    )
    assert option(args, "-f") == "hls"
    assert option(args, "-hls_time") == "10"


def test_a_segment_list_needs_the_segment_muxer(tmp_path):
    with pytest.raises(ValueError, match="segment_list"):
        recording_output_args(
            output_format="mp4", target=tmp_path / "a.mp4", segment_list=tmp_path / "l.csv"
        )
    with pytest.raises(ValueError, match="segment_list"):
        recording_output_args(
            output_format="m3u8",
            target=tmp_path / "a.m3u8",
            segment_seconds=4,
            segment_list=tmp_path / "l.csv",
        )
    with pytest.raises(ValueError, match="positive"):
        recording_output_args(output_format="mp4", target=tmp_path / "a.mp4", segment_seconds=0)


# -- processing: maps and copy ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in ALL_FORMATS if f != "mp3"])
def test_copy_maps_tolerate_sources_without_audio_or_video(fmt):
    args = processing(fmt, transcoding={"audio_transcoding": "Disabled"})
    assert options(args, "-map") == ["0:v:0?", "0:a:0?"]
    assert option(args, "-c:v") == "copy"
    assert option(args, "-c:a") == "copy"
    assert option(args, "-max_muxing_queue_size") == "1024"


def test_copied_audio_into_mp4_gets_aac_adtstoasc_and_nowhere_else():
    copy = {"audio_transcoding": "Disabled"}
    assert option(processing("mp4", transcoding=copy), "-bsf:a") == "aac_adtstoasc"
    for fmt in ("flv", "mkv", "mpegts", "avi", "m3u8"):  # FLV inserts it itself
        assert "-bsf:a" not in processing(fmt, transcoding=copy), fmt
    assert "-bsf:a" not in processing("mp4")  # encoded AAC has no ADTS headers


def test_mp3_is_audio_only_and_always_libmp3lame():
    copied = processing("mp3", transcoding={"audio_transcoding": "Disabled"})
    assert "-vn" in copied
    assert options(copied, "-map") == ["0:a:0"]  # mp3 needs audio: no "?"
    assert option(copied, "-c:a") == "libmp3lame"
    assert option(copied, "-b:a") == "128k"
    assert "-ar" not in copied  # nothing asked: the source's rate (lame resamples if needed)
    assert not {"-c:v", "-filter:v", "-filter_complex"} & set(copied)

    asked = processing("mp3", transcoding={"audio_transcoding": "aac", "sample_rate": 48000})
    assert option(asked, "-c:a") == "libmp3lame"
    assert option(asked, "-ar") == "48000"


# -- processing: transcoding --------------------------------------------------------------------


def test_every_video_transcoding_field_becomes_an_option():
    args = processing(
        transcoding={
            **X264, "output_video_bitrate": 2500, "encoding_rate": 3000, "preset": "veryfast",
            "tune": "zerolatency", "pix_fmt": "yuv420p", "gop": 50, "force_key_frames": 2,
            "frame_width": 1280, "frame_height": 720, "filter_fps": 29.97, "slices": 4,
            "cores": 2, "audio_transcoding": "aac", "output_audio_bitrate": 96,
            "sample_rate": 48000,
        }
    )  # fmt: skip

    assert option(args, "-c:v") == "libx264"
    assert option(args, "-b:v") == "2500k"
    assert option(args, "-maxrate") == "3000k"
    assert option(args, "-bufsize") == "6000k"
    assert option(args, "-preset") == "veryfast"
    assert option(args, "-tune") == "zerolatency"
    assert option(args, "-pix_fmt") == "yuv420p"
    assert option(args, "-g") == "50"
    assert option(args, "-force_key_frames") == "expr:gte(t,n_forced*2)"
    assert option(args, "-slices") == "4"
    assert option(args, "-threads") == "2"
    assert option(args, "-filter:v") == "scale=1280:720,fps=29.97"
    assert option(args, "-c:a") == "aac"
    assert option(args, "-b:a") == "96k"
    assert option(args, "-ar") == "48000"
    assert options(args, "-map") == ["0:v:0?", "0:a:0?"]
    assert "-crf" not in args


def test_crf_replaces_the_bitrate_and_encoding_rate_caps_it():
    args = processing(transcoding={**X264, "crf": 23})
    assert option(args, "-crf") == "23"
    assert "-b:v" not in args
    assert "-maxrate" not in args
    capped = processing(transcoding={**X264, "crf": "23", "encoding_rate": "4000"})
    assert option(capped, "-crf") == "23"
    assert option(capped, "-maxrate") == "4000k"


def test_bitrate_mode_caps_at_the_bitrate_when_no_peak_is_given():
    args = processing(transcoding=X264)  # the seed: 6000 kbit/s, ultrafast
    assert option(args, "-b:v") == "6000k"
    assert option(args, "-maxrate") == "6000k"
    assert option(args, "-preset") == "ultrafast"
    for absent in ("-tune", "-pix_fmt", "-g", "-slices", "-threads", "-filter:v"):
        assert absent not in args, absent


@pytest.mark.parametrize("off", ["", "Disabled", 0])
def test_force_key_frames_can_be_off(off):
    args = processing(transcoding={**X264, "force_key_frames": off})
    assert "-force_key_frames" not in args


@pytest.mark.parametrize(("width", "height", "scale"), [(640, "", "640:-2"), ("", 360, "-2:360")])
def test_one_frame_dimension_keeps_the_aspect_ratio(width, height, scale):
    args = processing(transcoding={**X264, "frame_width": width, "frame_height": height})
    assert option(args, "-filter:v") == f"scale={scale}"


def test_libx265_takes_slices_and_quiet_logging_as_x265_params():
    args = processing("mkv", transcoding={"video_transcoding": "libx265", "slices": 2})
    assert option(args, "-c:v") == "libx265"
    assert option(args, "-x265-params") == "log-level=error:slices=2"
    assert "-slices" not in args


# -- processing: modify_audio, modify_video, overlay --------------------------------------------


def test_select_track_maps_that_track_and_requires_it():
    args = processing(modify_audio={"type": "SELECT_TRACK", "track": "2"})
    assert options(args, "-map") == ["0:v:0?", "0:a:2"]


@pytest.mark.parametrize(
    ("channel", "pan"),
    [("2", "pan=mono|c0=c1"), ("1,2", "pan=stereo|c0=c0|c1=c1"), ("2,1", "pan=stereo|c0=c1|c1=c0"),
     ("1,2,3,4,5,6", "pan=5.1|c0=c0|c1=c1|c2=c2|c3=c3|c4=c4|c5=c5")],
)  # fmt: skip
def test_select_channels_pans_the_chosen_channels_in_order(channel, pan):
    args = processing(modify_audio={"type": "SELECT_CHANNELS", "channel": channel})
    assert option(args, "-filter:a") == pan


def test_mute_drops_audio():
    args = processing(modify_audio={"type": "MUTE"})
    assert "-an" in args
    assert options(args, "-map") == ["0:v:0?"]
    assert "-c:a" not in args


@pytest.mark.parametrize(
    ("kind", "chain"),
    [("DEINTERLACE", "yadif"), ("FLIP_HORIZONTAL", "hflip"), ("FLIP_VERTICAL", "vflip"),
     ("ROTATE_90", "transpose=clock"), ("ROTATE_180", "hflip,vflip"),
     ("ROTATE_270", "transpose=cclock"), ("GRAYSCALE", "hue=s=0")],
)  # fmt: skip
def test_modify_video_filters(kind, chain):
    args = processing(transcoding=X264, modify_video={"type": kind})
    assert option(args, "-filter:v") == chain


def test_text_overlay_is_drawn_after_scaling():
    args = processing(
        transcoding={**X264, "frame_width": 320, "frame_height": 240},
        modify_video={"type": "FLIP_HORIZONTAL"},
        overlay={"type": "TEXT", "text": "LIVE", "position": {"x": 10, "y": 20}},
    )
    chain = option(args, "-filter:v")
    assert chain.startswith("hflip,scale=320:240,drawtext=")
    drawtext = parse_filtergraph(chain)[-1]
    assert drawtext[0] == "drawtext"
    assert drawtext[1]["text"] == "LIVE"
    assert (drawtext[1]["x"], drawtext[1]["y"]) == ("10", "20")
    assert drawtext[1]["expansion"] == "none"
    assert Path(drawtext[1].get("fontfile", "/usr/share/fonts")).exists()


def test_image_overlay_reads_a_second_input_through_filter_complex():
    overlay = {
        "type": "IMAGE",
        "image_url": "https://cdn.example.com/logo.png",
        "position": {"x": 16, "y": 9},
    }
    args = processing(
        transcoding={**X264, "frame_width": 1280, "frame_height": 720},
        overlay=overlay,
        overlay_input_index=1,
    )
    assert option(args, "-filter_complex") == (
        "[0:v:0]scale=1280:720[rh_base];"
        "[rh_base][1:v:0]overlay=x=16:y=9:eof_action=repeat[rh_video]"
    )
    assert options(args, "-map") == ["[rh_video]", "0:a:0?"]
    assert "-filter:v" not in args
    again = processing(transcoding=X264, overlay=overlay, overlay_input_index=2)
    assert option(again, "-filter_complex").startswith("[0:v:0]null[rh_base];[rh_base][2:v:0]")

    image = image_input_args(Overlay.model_validate(overlay))
    assert option(image, "-protocol_whitelist") == "http,https,tcp,tls,httpproxy"
    assert option(image, "-f") == "image2pipe"
    assert option(image, "-rw_timeout") == str(IO_TIMEOUT_US)
    assert image[-2:] == ["-i", "https://cdn.example.com/logo.png"]


def test_image_input_only_for_an_image_overlay():
    assert image_input_args(Overlay()) == []
    assert image_input_args(Overlay(type="TEXT", text="hi")) == []


# -- overlay text escaping ----------------------------------------------------------------------

_WHITESPACE = " \n\t\r"


def av_get_token(text: str, term: str) -> tuple[str, str]:
    """FFmpeg's ``av_get_token`` (libavutil/avstring.c): one token and the rest of ``text``."""
    i = len(text) - len(text.lstrip(_WHITESPACE))
    out: list[str] = []
    end = 0
    while i < len(text) and text[i] not in term:
        c = text[i]
        i += 1
        if c == "\\" and i < len(text):
            out.append(text[i])
            i += 1
            end = len(out)
        elif c == "'":
            while i < len(text) and text[i] != "'":
                out.append(text[i])
                i += 1
            if i < len(text):
                i += 1
                end = len(out)
        else:
            out.append(c)
    while len(out) > end and out[-1] in _WHITESPACE:
        out.pop()
    return "".join(out), text[i:]


def parse_filter_options(args: str) -> dict[str, str]:
    """A filter's ``key=value:...`` as FFmpeg's ``process_options`` reads it (explicit keys)."""
    found: dict[str, str] = {}
    while args:
        match = re.match(r"\s*([A-Za-z0-9_./-]+)\s*=", args)
        assert match, f"no key at {args!r}"
        value, args = av_get_token(args[match.end() :], ":")
        assert match[1] not in found, f"option {match[1]} given twice"
        found[match[1]] = value
        args = args[1:]  # the ":" separator
    return found


def parse_filtergraph(chain: str) -> list[tuple[str, dict[str, str]]]:
    """A linear ``-vf`` chain as FFmpeg's graph parser splits it: (name, options) per filter."""
    filters = []
    rest = chain
    while True:
        name, rest = av_get_token(rest, "=,;[")
        opts = ""
        if rest.startswith("="):
            opts, rest = av_get_token(rest[1:], "[],;")
        filters.append((name, parse_filter_options(opts) if "=" in opts else {"": opts}))
        assert not rest or rest[0] == ",", f"graph continues oddly: {rest!r}"
        if not rest:
            return filters
        rest = rest[1:]


HOSTILE_TEXTS = [
    "a'b:c\\d,[x];%{pts}",
    "textfile=/etc/passwd",
    "x:textfile=/etc/passwd:fontfile=/etc/shadow",
    "'",
    "\\",
    "a\\'b\\\\c",
    "[in]null[out];movie=/etc/passwd",
    "  leading and trailing  ",
    "line one\nline two\ttab",
    "%{localtime} %{eif:1:d} %%",
    "ünïcødé — ✓",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_overlay_text_cannot_escape_its_option(text):
    vf = drawtext_filter(Overlay(type="TEXT", text=text))

    (name, opts), *others = parse_filtergraph(vf)
    assert not others, "the text added filters"
    assert name == "drawtext"
    assert list(opts) == ["fontfile", "expansion", "text", "fontsize", "fontcolor", "x", "y"] or (
        list(opts) == ["font", "expansion", "text", "fontsize", "fontcolor", "x", "y"]
    )
    assert opts["text"] == text
    assert opts["expansion"] == "none"  # %{...} stays literal


def test_the_briefs_hostile_text_is_escaped_exactly():
    vf = drawtext_filter(Overlay(type="TEXT", text="a'b:c\\d,[x];%{pts}"))
    # Level 1 (option value): a\'b\:c\\d,[x];%{pts}  then level 2 (graph): escape \ ' [ ] , ;
    assert ":text=a\\\\\\'b\\\\:c\\\\\\\\d\\,\\[x\\]\\;%{pts}:" in vf


# -- cross-field validation ---------------------------------------------------------------------

REFUSED = [
    ("mp4", {"overlay": {"type": "TEXT", "text": "x"}}, "transcoding.video_transcoding"),
    ("mp4", {"overlay": {"type": "IMAGE", "image_url": "http://h/l.png"}},
     "transcoding.video_transcoding"),
    ("mkv", {"modify_video": {"type": "DEINTERLACE"}}, "transcoding.video_transcoding"),
    ("mp4", {"transcoding": {"frame_width": 640}}, "transcoding.video_transcoding"),
    ("mp4", {"transcoding": {"filter_fps": 25}}, "transcoding.video_transcoding"),
    ("mp4", {"transcoding": {"audio_transcoding": "Disabled"},
             "modify_audio": {"type": "SELECT_CHANNELS", "channel": "1"}},
     "transcoding.audio_transcoding"),
    ("flv", {"transcoding": {"audio_transcoding": "libopus", "sample_rate": 48000}},
     "transcoding.audio_transcoding"),
    ("flv", {"transcoding": {"audio_transcoding": "ac3"}}, "transcoding.audio_transcoding"),
    ("avi", {"transcoding": {"audio_transcoding": "opus", "sample_rate": 48000}},
     "transcoding.audio_transcoding"),
    ("flv", {"transcoding": {"video_transcoding": "libx265"}}, "transcoding.video_transcoding"),
    ("mp3", {"transcoding": {"video_transcoding": "libx264"}}, "transcoding.video_transcoding"),
    ("mp3", {"transcoding": X264, "overlay": {"type": "TEXT", "text": "x"}},
     "transcoding.video_transcoding"),
    ("mp3", {"overlay": {"type": "TEXT", "text": "x"}}, "overlay.type"),
    ("mp3", {"modify_video": {"type": "GRAYSCALE"}}, "modify_video.type"),
    ("mp3", {"transcoding": {"frame_height": 720}}, "transcoding.frame_height"),
    ("mp3", {"modify_audio": {"type": "MUTE"}}, "modify_audio.type"),
    ("mp3", {"modify_audio": {"type": "SELECT_CHANNELS", "channel": "1,2,3"}},
     "modify_audio.channel"),
    ("mp4", {"modify_audio": {"type": "SELECT_CHANNELS", "channel": "1,2,3,4,5,6,7,8,9"}},
     "modify_audio.channel"),
    ("mp4", {"transcoding": {"audio_transcoding": "libopus", "sample_rate": 44100}},
     "transcoding.sample_rate"),
    ("mkv", {"transcoding": {"audio_transcoding": "ac3", "sample_rate": 22050}},
     "transcoding.sample_rate"),
    ("mp3", {"transcoding": {"audio_transcoding": "mp3", "sample_rate": 96000}},
     "transcoding.sample_rate"),
    ("mp3", {"transcoding": {"output_audio_bitrate": 500}}, "transcoding.output_audio_bitrate"),
    ("mkv", {"transcoding": {"audio_transcoding": "libopus", "sample_rate": 48000,
                             "output_audio_bitrate": 320}}, "transcoding.output_audio_bitrate"),
    ("mkv", {"transcoding": {"video_transcoding": "libx265", "tune": "film"}}, "transcoding.tune"),
    ("mp4", {"transcoding": {"video_transcoding": "libx265", "pix_fmt": "nv12"}},
     "transcoding.pix_fmt"),
    ("mp4", {"transcoding": {**X264, "frame_width": 641}}, "transcoding.frame_width"),
]  # fmt: skip


def refused_id(case: tuple[str, dict[str, Any], str]) -> str:
    fmt, changes, field = case
    return f"{fmt}-{field}-{'-'.join(str(v) for b in changes.values() for v in b.values())}"


@pytest.mark.parametrize("case", REFUSED, ids=refused_id)
def test_impossible_combinations_name_the_field_to_change(case):
    fmt, changes, field = case
    blocks = {
        "transcoding": Transcoding.model_validate(
            {**SEED_TRANSCODING, **changes.get("transcoding", {})}
        ),
        "modify_audio": ModifyAudio.model_validate(changes.get("modify_audio", {})),
        "modify_video": ModifyVideo.model_validate(changes.get("modify_video", {})),
        "overlay": Overlay.model_validate(changes.get("overlay", {})),
    }
    with pytest.raises(ValueError, match=rf"^@{re.escape(field)}: \S") as refused:
        check_processing(output_format=fmt, **blocks)
    with pytest.raises(ValueError, match=rf"^@{re.escape(field)}: "):
        processing_args(output_format=fmt, **blocks)  # the builder refuses it as well

    body = recording_payload(0, output_format=fmt)
    for block, change in changes.items():
        body[block] = {**body[block], **change}
    with pytest.raises(ValidationError) as invalid:
        RecordingIn.model_validate(body)
    (error,) = invalid.value.errors()
    assert error["msg"] == f"Value error, {refused.value}"


def test_a_refusal_reaches_the_api_as_that_field():
    from reelhouse.api.errors import validation_details

    body = recording_payload(0, overlay={"type": "TEXT", "text": "LIVE"})
    with pytest.raises(ValidationError) as invalid:
        RecordingIn.model_validate(body)
    (detail,) = validation_details(list(invalid.value.errors()))
    assert detail == {
        "field": "transcoding.video_transcoding",
        "message": "an overlay needs video encoding; set video_transcoding to libx264 or libx265",
    }


ACCEPTED = [
    ("mp4", {"transcoding": {"audio_transcoding": "libopus", "sample_rate": 48000}}),
    ("mp4", {"transcoding": {"audio_transcoding": "ac3", "output_audio_bitrate": 384}}),
    ("mkv", {"transcoding": {"video_transcoding": "libx265", "tune": "grain",
                             "pix_fmt": "yuv420p10le"}}),
    ("mpegts", {"transcoding": {"video_transcoding": "libx265", "audio_transcoding": "opus",
                                "sample_rate": 48000}}),
    ("flv", {"transcoding": {**X264, "audio_transcoding": "libmp3lame"}}),
    ("avi", {"transcoding": {"audio_transcoding": "ac3", "sample_rate": 48000}}),
    ("mp3", {"transcoding": {"audio_transcoding": "Disabled", "output_audio_bitrate": 320}}),
    ("mp3", {"modify_audio": {"type": "SELECT_CHANNELS", "channel": "2"}}),
    ("mp4", {"transcoding": X264, "overlay": {"type": "TEXT", "text": "LIVE"},
             "modify_video": {"type": "ROTATE_90"},
             "modify_audio": {"type": "SELECT_CHANNELS", "channel": "1,2,3,4,5,6,7,8"}}),
    ("m3u8", {"modify_audio": {"type": "MUTE"}}),
    ("mp4", {"modify_audio": {"type": "SELECT_TRACK", "track": "1"},
             "transcoding": {"audio_transcoding": "Disabled"}}),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "changes"), ACCEPTED)
def test_workable_combinations_pass(fmt, changes):
    body = recording_payload(0, output_format=fmt)
    for block, change in changes.items():
        body[block] = {**body[block], **change}
    job = RecordingIn.model_validate(body)
    args = build_recording_args(inp=job.input, job=job, target=Path("/rec/x"))
    assert all(isinstance(a, str) for a in args)


# -- whole recordings ---------------------------------------------------------------------------


SEED_BODIES = seed_payloads("recordings-api.txt", "/api/recording/create")


@pytest.mark.parametrize("body", SEED_BODIES, ids=[b["recording_name"] for b in SEED_BODIES])
def test_every_seed_payload_builds(body, tmp_path):
    job = RecordingIn.model_validate(body)
    split = job.recording_mode == "RECORDING_MODE_SPLIT_BY_TIME"
    ext = FILE_EXTENSIONS[job.output_format]
    target = tmp_path / (f"prog-%Y-%m-%d_%H-%M-%S.{ext}" if split else f"prog.{ext}")
    listing = tmp_path / ".part.csv" if split and job.output_format != "m3u8" else None

    args = build_recording_args(inp=job.input, job=job, target=target, segment_list=listing)

    assert all(isinstance(a, str) for a in args)
    assert args[0] == "-hide_banner"
    assert "ffmpeg" not in args[0]
    assert "-progress" not in args
    assert "-y" not in args
    assert option(args, "-protocol_whitelist") == "srt"
    assert args[-1] == str(target)
    assert option(args, "-c:v") == "copy"
    assert option(args, "-c:a") == "aac"  # the seeds ask for AAC 128k at 44.1 kHz
    assert option(args, "-ar") == "44100"
    if job.output_format == "m3u8":
        assert option(args, "-f") == "hls"
    elif split:
        assert option(args, "-segment_time") == "600"
        assert option(args, "-segment_list") == str(listing)
    else:
        assert option(args, "-f") == "mp4"


def test_build_orders_input_image_processing_output(tmp_path):
    job = recording(
        0,
        transcoding={**SEED_TRANSCODING, **X264},
        overlay={"type": "IMAGE", "image_url": "http://127.0.0.1:8080/logo.png"},
    )
    args = build_recording_args(inp=job.input, job=job, target=tmp_path / "x.mp4")

    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert [args[i + 1] for i in inputs] == [job.input.input_stream_url, job.overlay.image_url]
    assert inputs[1] < args.index("-filter_complex") < args.index("-n") < len(args) - 1
    assert options(args, "-protocol_whitelist") == ["srt", "http,https,tcp,tls,httpproxy"]


def test_split_with_encoding_forces_keyframes_at_the_segment_length(tmp_path):
    payload = recording_payload(1)  # split every 10 minutes
    payload["transcoding"] = {**payload["transcoding"], **X264, "force_key_frames": "Disabled"}
    job = RecordingIn.model_validate(payload)
    args = build_recording_args(inp=job.input, job=job, target=tmp_path / "s-%H.mp4")
    assert option(args, "-force_key_frames") == "expr:gte(t,n_forced*600)"

    payload["transcoding"]["force_key_frames"] = 2  # the user's choice wins
    job = RecordingIn.model_validate(payload)
    args = build_recording_args(inp=job.input, job=job, target=tmp_path / "s-%H.mp4")
    assert option(args, "-force_key_frames") == "expr:gte(t,n_forced*2)"

    hls = recording(2, transcoding={**SEED_TRANSCODING, **X264, "force_key_frames": ""})
    args = build_recording_args(inp=hls.input, job=hls, target=tmp_path / "h.m3u8")
    assert option(args, "-force_key_frames") == f"expr:gte(t,n_forced*{HLS_SEGMENT_SECONDS})"
