"""DRAFT command builder (lead's stand-in until the full builder lands)."""

from __future__ import annotations

from pathlib import Path

from reelhouse.common.contracts.media import InputIn
from reelhouse.common.contracts.recording import RecordingIn

PROTOCOL_WHITELIST = {
    "INPUT_TYPE_SRT_URL": ("srt", "udp"),
    "INPUT_TYPE_RTMP_URL": ("rtmp", "rtmps", "tcp", "tls"),
    "INPUT_TYPE_HLS_URL": ("http", "https", "tcp", "tls", "crypto", "hls"),
    "INPUT_TYPE_MPEG_DASH_URL": ("http", "https", "tcp", "tls", "crypto"),
    "INPUT_TYPE_RTSP_URL": ("rtsp", "rtsps", "rtp", "udp", "tcp", "tls"),
    "INPUT_TYPE_RTP_URL": ("rtp", "udp"),
    "INPUT_TYPE_UDP_URL": ("udp",),
    "INPUT_TYPE_RIST_URL": ("rist", "udp"),
}


def input_args(inp: InputIn) -> list[str]:
    return [
        "-analyzeduration",
        "1500000",
        "-probesize",
        "2000000",
        "-protocol_whitelist",
        ",".join(PROTOCOL_WHITELIST[inp.input_type]),
        "-i",
        inp.input_stream_url,
    ]


def build_recording_args(
    *, inp: InputIn, job: RecordingIn, target: Path, segment_list: Path | None = None
) -> list[str]:
    args = ["-hide_banner", "-y", *input_args(inp)]
    fmt = job.output_format
    t = job.transcoding
    if fmt == "mp3":
        args += ["-map", "0:a:0", "-vn", "-c:a", "libmp3lame", "-b:a", f"{t.output_audio_bitrate}k"]
    else:
        args += ["-map", "0:v:0?", "-map", "0:a:0?", "-c:v", "copy"]
        if t.audio_transcoding == "Disabled":
            args += ["-c:a", "copy"]
        else:
            args += [
                "-c:a",
                t.audio_transcoding,
                "-b:a",
                f"{t.output_audio_bitrate}k",
                "-ar",
                str(t.sample_rate),
            ]
    muxer = {
        "mp4": "mp4",
        "mkv": "matroska",
        "flv": "flv",
        "mpegts": "mpegts",
        "avi": "avi",
        "mp3": "mp3",
        "m3u8": "hls",
    }[fmt]
    split = job.recording_mode == "RECORDING_MODE_SPLIT_BY_TIME" and fmt != "m3u8"
    mp4 = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
    if split:
        args += [
            "-f",
            "segment",
            "-segment_time",
            str(job.recording_mode_settings.total_seconds),
            "-reset_timestamps",
            "1",
            "-strftime",
            "1",
            "-segment_format",
            muxer,
        ]
        if fmt == "mp4":
            args += [
                "-segment_format_options",
                "movflags=+frag_keyframe+empty_moov+default_base_moof",
            ]
        if segment_list is not None:
            args += ["-segment_list", str(segment_list), "-segment_list_type", "csv"]
        return [*args, str(target)]
    if fmt == "mp4":
        args += mp4
    if fmt == "m3u8":
        args += [
            "-hls_playlist_type",
            "event",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(target.with_name(target.stem + "_%05d.ts")),
        ]
    return [*args, "-f", muxer, str(target)]
