"""The command builder's arguments run by real FFmpeg against live sources, results ffprobed.

Each run is ``ffmpeg -nostdin -progress pipe:1 -nostats <built args>`` (the supervisor's shape),
bounded with ``-t`` or ended with SIGKILL. Sources are the live FFmpeg processes of
``support.media`` (640x360 H.264 + AAC stereo, 1 s GOP). An SRT listener serves one client at a
time, so one FFmpeg writes every output format from one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.media import (
    FFMPEG,
    FFPROBE,
    FfmpegProcess,
    LiveSource,
    av_streams,
    ffprobe,
    wait_until,
)
from support.seeds import recording_payload

from reelhouse.common.contracts.media import InputIn, Overlay
from reelhouse.common.contracts.recording import FILE_EXTENSIONS, RecordingIn
from reelhouse.common.ffmpeg.recording_args import build_recording_args, recording_output_args
from reelhouse.common.ffmpeg.shared_args import (
    drawtext_filter,
    image_input_args,
    input_args,
    overlay_font_file,
    processing_args,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ALL_FORMATS = ("mp4", "mkv", "flv", "mpegts", "avi", "mp3", "m3u8")
INPUT_TYPES = {
    "srt": "INPUT_TYPE_SRT_URL",
    "rtmp": "INPUT_TYPE_RTMP_URL",
    "udp": "INPUT_TYPE_UDP_URL",
    "hls": "INPUT_TYPE_HLS_URL",
}


def job_for(source: LiveSource, kind: str = "srt", **changes: Any) -> RecordingIn:
    """The seed's mp4 archive job (``recording_payload(0)``) on ``source``, with changes."""
    body = recording_payload(0, **changes)
    body["input"].update(input_type=INPUT_TYPES[kind], input_stream_url=source.url)
    return RecordingIn.model_validate(body)


def bounded(args: list[str], seconds: float) -> list[str]:
    """``args`` with ``-t seconds`` as the output's last option (before the target)."""
    return [*args[:-1], "-t", str(seconds), args[-1]]


async def run_ffmpeg(args: list[str], *, timeout: float = 40.0) -> FfmpegProcess:
    """Run to the end (``-t``), at most ``timeout`` seconds; always reaped."""
    proc = FfmpegProcess(
        [FFMPEG, "-nostdin", "-progress", "pipe:1", "-nostats", "-stats_period", "0.25", *args],
        name="recording",
    )
    await proc.start()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    finally:
        await proc.stop()
    return proc


def duration(probe: dict[str, Any]) -> float:
    return float(probe["format"]["duration"])


def codecs(probe: dict[str, Any]) -> list[str]:
    return [s["codec_name"] for s in probe["streams"]]


async def test_every_output_format_records_from_one_srt_connection(srt_source, tmp_path):
    job = job_for(srt_source)
    args = ["-hide_banner", *input_args(job.input)]
    targets: dict[str, Path] = {}
    for fmt in ALL_FORMATS:
        targets[fmt] = tmp_path / f"rec-{fmt}.{FILE_EXTENSIONS[fmt]}"
        output = [
            *processing_args(
                transcoding=job.transcoding.model_copy(update={"audio_transcoding": "Disabled"}),
                modify_audio=job.modify_audio,
                modify_video=job.modify_video,
                overlay=job.overlay,
                output_format=fmt,
            ),
            *recording_output_args(output_format=fmt, target=targets[fmt]),  # type: ignore[arg-type]
        ]
        args += bounded(output, 4)

    proc = await run_ffmpeg(args)

    assert proc.returncode == 0, proc.stderr_tail
    for fmt, target in targets.items():
        probe = await ffprobe(target)
        want = ["mp3"] if fmt == "mp3" else ["h264", "aac"]
        assert codecs(probe) == want, (fmt, codecs(probe))
        assert 3.5 <= duration(probe) <= 4.6, (fmt, duration(probe))
    segments = sorted(tmp_path.glob("rec-m3u8-*.ts"))
    assert segments, "the HLS playlist's segments are written next to it"
    assert "#EXT-X-ENDLIST" in targets["m3u8"].read_text()


@pytest.mark.parametrize(
    ("kind", "fmt"), [("rtmp", "mp4"), ("udp", "mkv"), ("hls", "flv")], ids=["rtmp", "udp", "hls"]
)
async def test_rtmp_udp_and_hls_inputs_record(media_source_factory, tmp_path, kind, fmt):
    source = await media_source_factory(kind)
    job = job_for(source, kind, output_format=fmt)
    target = tmp_path / f"rec.{FILE_EXTENSIONS[fmt]}"

    proc = await run_ffmpeg(bounded(build_recording_args(inp=job.input, job=job, target=target), 3))

    assert proc.returncode == 0, proc.stderr_tail
    probe = await ffprobe(target)
    video, audio = av_streams(probe)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
    assert audio["codec_name"] == "aac"
    assert 2.5 <= duration(probe) <= 3.6


async def test_split_mode_lists_each_segment_only_once_it_is_complete(srt_source, tmp_path):
    job = job_for(
        srt_source,
        recording_mode="RECORDING_MODE_SPLIT_BY_TIME",
        recording_mode_settings={"hours": 0, "minutes": 0, "seconds": 2},
    )
    target = tmp_path / "prog-%Y-%m-%d_%H-%M-%S.mp4"
    listing = tmp_path / ".part.csv"
    args = build_recording_args(inp=job.input, job=job, target=target, segment_list=listing)
    proc = FfmpegProcess([FFMPEG, "-nostdin", "-nostats", *bounded(args, 9)], name="split")
    listed: list[tuple[str, int, dict[str, Any]]] = []  # (line, size then, ffprobe then)

    async def watch() -> None:
        while True:
            running = proc.is_running
            lines = listing.read_text().splitlines() if listing.exists() else []
            for line in lines[len(listed) :]:
                path = tmp_path / line.split(",")[0]
                listed.append((line, path.stat().st_size, await ffprobe(path)))
            if not running:
                return
            await asyncio.sleep(0.05)

    await proc.start()
    try:
        await asyncio.wait_for(asyncio.gather(proc.wait(), watch()), 40)
    finally:
        await proc.stop()

    assert proc.returncode == 0, proc.stderr_tail
    names = [line.split(",")[0] for line, _, _ in listed]
    # Names have one-second resolution: the first segment also holds the ~2 s probed at the
    # start, so with 2 s segments it can close in the second the next one opens, and that one
    # then reuses (overwrites) its name. Only segments whose name stays theirs are checked.
    kept = [entry for i, entry in enumerate(listed) if names[i] not in names[i + 1 :]]
    assert len(kept) >= 4, listed  # 3 cut while running + the last one, closed at the end
    for line, size, probe in kept[:3]:
        name, start, end = line.split(",")
        assert "%" not in name
        assert name.startswith("prog-")
        assert name.endswith(".mp4")
        assert size == (tmp_path / name).stat().st_size, f"{name} grew after it was listed"
        assert codecs(probe) == ["h264", "aac"]
        assert 1.9 <= duration(probe) <= 2.2, (name, duration(probe))
        assert 1.9 <= float(end) - float(start) <= 2.2


async def test_transcode_with_text_overlay_channel_selection_size_and_fps(srt_source, tmp_path):
    job = job_for(
        srt_source,
        transcoding={
            **recording_payload(0)["transcoding"],
            "video_transcoding": "libx264",
            "frame_width": 320,
            "frame_height": 240,
            "filter_fps": 15,
            "output_video_bitrate": 800,
        },
        modify_audio={"type": "SELECT_CHANNELS", "channel": "2", "track": "0"},
        overlay={
            "type": "TEXT",
            "text": "a'b:c\\d,[x];%{pts} textfile=/etc/passwd",
            "position": {"x": 8, "y": 8},
        },
    )
    target = tmp_path / "transcoded.mp4"

    proc = await run_ffmpeg(bounded(build_recording_args(inp=job.input, job=job, target=target), 3))

    assert proc.returncode == 0, proc.stderr_tail
    video, audio = av_streams(await ffprobe(target))
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert video["r_frame_rate"] == "15/1"
    assert (audio["codec_name"], audio["channels"], audio["sample_rate"]) == ("aac", 1, "44100")


async def test_kill_9_mid_mp4_recording_leaves_a_file_ffprobe_reads_whole(srt_source, tmp_path):
    job = job_for(srt_source)
    target = tmp_path / "killed.mp4"
    args = build_recording_args(inp=job.input, job=job, target=target)
    proc = FfmpegProcess(
        [FFMPEG, "-nostdin", "-progress", "pipe:1", "-nostats", "-stats_period", "0.25", *args],
        name="killed",
    )
    await proc.start()
    try:
        await wait_until(
            lambda: int(proc.progress.get("out_time_us", "0") or 0) >= 4_300_000,
            timeout=30,
            message="4.3 s recorded",
            abort=proc.exit_reason,
        )
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        await proc.stop()

    probe = await ffprobe(target)
    assert codecs(probe) == ["h264", "aac"]
    # Every complete 1 s fragment is there, and the duration is what can actually be read:
    # without -flush_packets 1 the last fragment is half written ("partial file") and ffprobe
    # reports more than it can read.
    counted = subprocess.run(
        [FFPROBE, "-v", "warning", "-count_packets", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_packets", "-of", "json", str(target)],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    assert "partial file" not in counted.stderr
    frames = int(json.loads(counted.stdout)["streams"][0]["nb_read_packets"])
    assert 3.0 <= duration(probe) <= 5.0
    assert abs(frames / 25 - duration(probe)) <= 0.1, (frames, duration(probe))


# -- security: the whitelist, overlay text -------------------------------------------------------


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """A stdlib HTTP server on a free loopback port serving ``directory``; yields its base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_media(path: Path, *extra: str, seconds: float = 1.0) -> Path:
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25",
         "-f", "lavfi", "-i", "sine", "-t", str(seconds), "-c:v", "libx264", "-preset",
         "ultrafast", "-c:a", "aac", *extra, str(path)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("segment", ["file:///etc/passwd", "local-ts"])
async def test_hls_playlist_cannot_make_ffmpeg_read_local_files(tmp_path, segment):
    www = tmp_path / "www"
    www.mkdir()
    if segment == "local-ts":
        # A real TS segment that the hls demuxer would play if anything let it open file:.
        segment = (make_media(tmp_path / "secret.ts")).as_uri()
    (www / "evil.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
    )
    target = tmp_path / "stolen.ts"
    with http_server(www) as base:
        inp = InputIn(input_type="INPUT_TYPE_HLS_URL", input_stream_url=f"{base}/evil.m3u8")
        job = RecordingIn.model_validate(
            recording_payload(0, output_format="mpegts", input=inp.model_dump())
        )
        proc = await run_ffmpeg(build_recording_args(inp=inp, job=job, target=target), timeout=30)

    assert proc.returncode != 0
    assert not target.exists() or target.stat().st_size == 0
    if segment.endswith("secret.ts"):
        assert (
            "Protocol 'file' not on whitelist 'http,https,tcp,tls,crypto,httpproxy'"
            in proc.stderr_tail
        )


def render_first_frame(vf: str) -> bytes:
    out = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=480x64:d=0.04",
         "-vf", vf, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, timeout=20, check=True,
    )  # fmt: skip
    return out.stdout


HOSTILE_TEXTS = [
    "a'b:c\\d,[x];%{pts}",
    "x:textfile=/etc/passwd",
    "'quoted' [in]null[out];drawbox",
    "  spaced  ",
    "ends with a backslash\\",
    "%{localtime} %{eif:1:d}",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_overlay_text_is_drawn_literally(tmp_path, text):
    """The escaped drawtext draws exactly the pixels of the same text read from a file."""
    overlay = Overlay(type="TEXT", text=text, font_size=20, position={"x": 4, "y": 4})
    raw = tmp_path / "text.txt"
    raw.write_text(text)
    reference = (
        f"drawtext=fontfile={overlay_font_file()}:expansion=none:textfile={raw}"
        ":fontsize=20:fontcolor=white:x=4:y=4"
    )

    drawn = render_first_frame(drawtext_filter(overlay))

    assert any(drawn), "some text was drawn"
    assert hashlib.sha256(drawn).digest() == hashlib.sha256(render_first_frame(reference)).digest()
    assert drawn != render_first_frame(drawtext_filter(overlay.model_copy(update={"text": "x"})))


async def test_image_overlay_reads_the_picture_over_http(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=40x30", "-frames:v", "1",
         str(www / "logo.png")],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    target = tmp_path / "logo.mkv"
    with http_server(www) as base:
        overlay = Overlay(type="IMAGE", image_url=f"{base}/logo.png", position={"x": 20, "y": 10})
        job = RecordingIn.model_validate(
            recording_payload(
                0,
                output_format="mkv",
                overlay=overlay.model_dump(),
                transcoding={**recording_payload(0)["transcoding"], "video_transcoding": "libx264"},
            )
        )
        args = [
            "-hide_banner",
            "-f", "lavfi", "-i", "color=c=black:s=160x120:rate=25",
            *image_input_args(job.overlay),
            *processing_args(
                transcoding=job.transcoding,
                modify_audio=job.modify_audio,
                modify_video=job.modify_video,
                overlay=job.overlay,
                output_format="mkv",
            ),
            *recording_output_args(output_format="mkv", target=target),
        ]  # fmt: skip
        proc = await run_ffmpeg(bounded(args, 2))

    assert proc.returncode == 0, proc.stderr_tail
    frame = subprocess.run(
        [FFMPEG, "-v", "error", "-ss", "1.5", "-i", str(target), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, timeout=20, check=True,
    ).stdout  # fmt: skip

    def pixel(x: int, y: int) -> tuple[int, ...]:
        at = (y * 160 + x) * 3
        return tuple(frame[at : at + 3])

    red, green, blue = pixel(40, 25)  # inside the 40x30 logo at (20, 10), after the picture's end
    assert red > 200, (red, green, blue)
    assert max(green, blue) < 60, (red, green, blue)
    assert max(pixel(5, 5)) < 40, "outside the logo the frame stays black"
