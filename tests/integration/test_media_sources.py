"""The live test media sources really are live: real ffmpeg servers, probed by real clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from support.media import (
    FFMPEG,
    FFPROBE,
    FfmpegProcess,
    HlsSource,
    LiveReceiver,
    LiveSource,
    MediaSourceError,
    MediaSpec,
    check_media,
    ffmpeg_children,
    ffprobe,
    port_in_use,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DEFAULT = MediaSpec()


async def assert_live_av(url: str | Path, spec: MediaSpec = DEFAULT) -> dict:
    probe = await ffprobe(url)
    assert check_media(probe, spec) == [], json.dumps(probe.get("streams"), indent=1)
    return probe


async def test_srt_source_serves_h264_aac(srt_source: LiveSource) -> None:
    assert srt_source.url == f"srt://127.0.0.1:{srt_source.port}"
    probe = await assert_live_av(srt_source.url)
    assert probe["format"]["format_name"] == "mpegts"


async def test_srt_listener_exits_on_disconnect_and_keep_serving_relaunches(
    srt_source: LiveSource,
) -> None:
    first_pid = srt_source.pid
    await assert_live_av(srt_source.url)
    # ffmpeg's SRT listener exits when its client leaves; a new one must be listening again.
    await wait_until(
        lambda: srt_source.launches >= 2 and srt_source.is_running,
        timeout=10,
        message="relaunch after client disconnect",
    )
    assert srt_source.pid != first_pid
    assert srt_source.exit_codes[0] != 0  # the first listener really exited (I/O error)
    await assert_live_av(srt_source.url)


async def test_srt_source_stop_and_restart_on_same_port(media_source_factory) -> None:
    source = await media_source_factory("srt")
    port = source.port
    # A client is connected and receiving when the source goes away.
    client = FfmpegProcess(
        [FFMPEG, "-nostdin", "-progress", "pipe:1", "-stats_period", "0.25",
         "-analyzeduration", "1000000", "-i", source.url, "-c", "copy", "-f", "null", "-"],
        name="srt-client",
    )  # fmt: skip
    await client.start()
    try:
        await wait_until(lambda: client.frames >= 10, timeout=15, message="client frames")
        await source.stop()
        assert not source.is_running
        assert not source.started
        assert not port_in_use(port, "udp")
        # The client notices (SRT shutdown on SIGTERM) and ends.
        await asyncio.wait_for(client.wait(), 10)
        assert client.frames >= 10
    finally:
        await client.stop()
    with pytest.raises(MediaSourceError, match="Connection to srt"):
        await ffprobe(f"{source.url}?connect_timeout=1000", timeout=10)

    await source.start()
    assert source.port == port
    assert source.is_running
    await assert_live_av(source.url)


async def test_rtmp_source_serves_h264_aac_to_successive_clients(
    rtmp_source: LiveSource,
) -> None:
    assert rtmp_source.url == f"rtmp://127.0.0.1:{rtmp_source.port}/live/stream"
    probe = await assert_live_av(rtmp_source.url)
    assert probe["format"]["format_name"] == "flv"
    # The RTMP server also exits when its client leaves; keep-serving brings it back.
    # Running is not yet listening: wait for the relaunched server's LISTEN socket.
    await wait_until(
        lambda: (
            rtmp_source.launches >= 2
            and rtmp_source.is_running
            and port_in_use(rtmp_source.port, "tcp", pid=rtmp_source.pid)
        ),
        timeout=10,
        message="rtmp relaunch listening",
    )
    await assert_live_av(rtmp_source.url)


async def test_udp_source_pushes_mpegts(udp_source: LiveSource) -> None:
    assert udp_source.url == f"udp://127.0.0.1:{udp_source.port}"
    # Nobody listened so far, yet the pusher is alive and encoding.
    assert udp_source.is_running
    probe = await assert_live_av(udp_source.url)
    assert probe["format"]["format_name"] == "mpegts"


async def test_hls_source_is_live_over_http(hls_source: LiveSource) -> None:
    assert isinstance(hls_source, HlsSource)
    assert hls_source.url == f"http://127.0.0.1:{hls_source.port}/live.m3u8"
    probe = await assert_live_av(hls_source.url)
    assert probe["format"]["format_name"] == "hls"
    playlist = hls_source.playlist_path.read_text()
    assert "#EXT-X-ENDLIST" not in playlist
    # Live: the window slides as new 1 s segments appear.
    first = hls_source.segments()[-1]
    await wait_until(
        lambda: hls_source.segments() and hls_source.segments()[-1] != first,
        timeout=5,
        message="a new HLS segment",
    )


async def test_rtmp_receiver_records_what_is_published(rtmp_receiver: LiveReceiver) -> None:
    assert rtmp_receiver.url == f"rtmp://127.0.0.1:{rtmp_receiver.port}/live/key"
    await publish(rtmp_receiver.url, seconds=2)
    assert await rtmp_receiver.wait_finished(timeout=10) == 0
    probe = await assert_live_av(rtmp_receiver.output_path)
    assert float(probe["format"]["duration"]) >= 1.5


async def test_srt_receiver_records_what_is_published(srt_receiver: LiveReceiver) -> None:
    assert srt_receiver.url == f"srt://127.0.0.1:{srt_receiver.port}"
    spec = MediaSpec.of("320x240", fps=30)
    await publish(srt_receiver.url, seconds=2, spec=spec)
    assert await srt_receiver.wait_finished(timeout=10) == 0
    probe = await assert_live_av(srt_receiver.output_path, spec)
    assert float(probe["format"]["duration"]) >= 1.5


async def test_keep_serving_receiver_records_each_publisher_session(
    media_receiver_factory,
) -> None:
    receiver = await media_receiver_factory("rtmp", keep_serving=True, key="restream")
    assert receiver.url.endswith("/live/restream")
    await publish(receiver.url, seconds=1)
    # The publisher left: that ffmpeg finished its file and a new one listens on the same port.
    await wait_until(
        lambda: receiver.launches == 2 and port_in_use(receiver.port, "tcp", pid=receiver.pid),
        timeout=10,
        message="receiver relaunch",
    )
    await publish(receiver.url, seconds=1)
    await wait_until(lambda: receiver.launches == 3, timeout=10, message="second relaunch")
    # The third ffmpeg listens but creates its file only once a publisher connects.
    files = receiver.output_files
    assert [f.name for f in files] == ["rtmp-received-0.ts", "rtmp-received-0-001.ts"]
    assert receiver.exit_codes == [0, 0]
    for f in files:
        await assert_live_av(f)


async def test_custom_size_fps_and_one_second_keyframes(
    media_source_factory, tmp_path: Path
) -> None:
    spec = MediaSpec.of("320x180", fps=30, video_bitrate="400k")
    source = await media_source_factory("srt", spec=spec)
    out = tmp_path / "capture.ts"
    client = FfmpegProcess(
        [FFMPEG, "-nostdin", "-v", "error", "-i", source.url, "-t", "2.6", "-c", "copy",
         "-f", "mpegts", "-y", str(out)],
        name="capture",
    )  # fmt: skip
    await client.start()
    assert await asyncio.wait_for(client.wait(), 20) == 0, client.stderr_tail
    video, _ = (await assert_live_av(out, spec))["streams"][:2]
    assert video["r_frame_rate"] == "30/1"

    proc = await asyncio.create_subprocess_exec(
        FFPROBE, "-v", "error", "-select_streams", "v:0",
        "-show_entries", "packet=pts_time,flags", "-of", "json", str(out),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await proc.communicate()
    packets = json.loads(stdout)["packets"]
    keys = [float(p["pts_time"]) for p in packets if "K" in p["flags"]]
    assert len(packets) >= 70
    assert len(keys) >= 3, keys
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(keys)]
    assert all(abs(g - 1.0) < 0.05 for g in gaps), gaps


async def test_no_ffmpeg_child_survives_stop(media_source_factory, media_receiver_factory) -> None:
    objs = [
        await media_source_factory("srt"),
        await media_source_factory("rtmp"),
        await media_source_factory("udp"),
        await media_source_factory("hls"),
        await media_receiver_factory("rtmp"),
        await media_receiver_factory("srt"),
    ]
    pids = {o.pid for o in objs}
    assert None not in pids
    children = {pid for pid, _ in ffmpeg_children()}
    assert pids <= children

    started = time.monotonic()
    await asyncio.gather(*(o.stop() for o in objs))
    assert time.monotonic() - started < 5  # SIGTERM suffices, even for blocked listeners
    assert not any(o.is_running for o in objs)
    assert ffmpeg_children() == []
    hls = objs[3]
    assert not port_in_use(hls.port, "tcp")  # the HTTP server is gone too
