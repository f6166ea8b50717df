"""The restream command builder and FFmpeg failure classification (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.seeds import restream_payload

from reelhouse.common.contracts.restream import RestreamIn
from reelhouse.common.ffmpeg.failures import classify, classify_lines, mask_secret
from reelhouse.common.ffmpeg.restream_args import build_restream_args


def job(index: int = 0, outputs: list[dict] | None = None, **transcoding) -> RestreamIn:
    body = restream_payload(index)
    if outputs is not None:
        body["output"] = [{**body["output"], **o} for o in outputs]
    body["transcoding"].update(transcoding)
    return RestreamIn.model_validate(body)


def test_one_rtmp_destination_is_plain_flv_with_the_key_in_the_url():
    args = build_restream_args(job=job(0))
    assert args[-6:-1] == ["-y", "-f", "flv", "-flvflags", "no_duration_filesize"]
    assert args[-1] == "rtmp://a.rtmp.youtube.com/live2/example-stream-key"
    assert args[args.index("-f") + 1] == "flv"
    assert "-y" in args
    assert "tee" not in args
    assert args[args.index("-i") + 1] == "srt://127.0.0.1:1935"
    assert args[args.index("-protocol_whitelist") + 1] == "srt"


def test_stream_key_is_appended_and_masked_for_display():
    j = job(0, [{"output_stream_url": "rtmp://host/app", "output_stream_key": "s3cret"}])
    assert j.output[0].target_url == "rtmp://host/app/s3cret"
    assert build_restream_args(job=j)[-1] == "rtmp://host/app/s3cret"
    assert mask_secret("rtmp://host/app/s3cret", secret_path_segment=True) == "rtmp://host/app/****"
    assert (
        mask_secret("srt://h:1?passphrase=abc&latency=2") == "srt://h:1?passphrase=****&latency=2"
    )
    assert mask_secret("rtmp://user:pw@host/app") == "rtmp://****@host/app"


def test_srt_and_dev_null_and_hls_destinations(tmp_path: Path):
    assert build_restream_args(job=job(1))[-3:] == ["-f", "mpegts", "srt://127.0.0.1:2035"]
    assert build_restream_args(job=job(2))[-3:] == ["-f", "mpegts", os.devnull]
    hls = job(2, [{"output_type": "OUTPUT_TYPE_HLS"}])
    args = build_restream_args(job=hls, hls_dir=tmp_path)
    assert args[-1] == str(tmp_path / "index.m3u8")
    assert args[args.index("-hls_segment_filename") + 1] == str(tmp_path / "segment-%05d.ts")
    assert "delete_segments" in args[args.index("-hls_flags") + 1]
    with pytest.raises(ValueError, match="hls_dir"):
        build_restream_args(job=hls)


def test_probe_length_reaches_the_restream_input():
    args = build_restream_args(job=job(0), probe_ms=600)
    assert args[args.index("-analyzeduration") + 1] == "600000"
    default = build_restream_args(job=job(0))
    assert default[default.index("-analyzeduration") + 1] == "2000000"


def test_srt_listener_output():
    j = job(1, [{"output_stream_url": "", "output_stream_listen_port": 9000}])
    assert build_restream_args(job=j)[-1] == "srt://0.0.0.0:9000?mode=listener"


def test_several_destinations_use_tee_with_fifo_recovery_and_flv_tags():
    j = job(0, [
        {"output_stream_url": "rtmp://a/live/k1"},
        {"output_type": "OUTPUT_TYPE_SRT_URL", "output_stream_url": "srt://b:1?streamid=x|y"},
    ])  # fmt: skip
    args = build_restream_args(job=j)
    assert args[args.index("-f") + 1] == "tee"
    assert args[args.index("-use_fifo") + 1] == "1"
    fifo = args[args.index("-fifo_options") + 1]
    assert "attempt_recovery=1" in fifo
    assert "recover_any_error=1" in fifo
    assert "drop_pkts_on_overflow=1" in fifo
    assert args[-1] == (
        "[f=flv:onfail=ignore]rtmp://a/live/k1|[f=mpegts:onfail=ignore]srt://b:1?streamid=x\\|y"
    )
    assert args[args.index("-tag:v") + 1] == "7"  # copy into flv through tee
    assert args[args.index("-tag:a") + 1] == "10"
    encoded = job(0, [{"output_stream_url": "rtmp://a/live/k1"}, {"output_stream_url": "rtmp://b/l/k"}],
                  video_transcoding="libx264", audio_transcoding="aac")  # fmt: skip
    assert "-tag:v" not in build_restream_args(job=encoded)
    assert "-tag:a" not in build_restream_args(job=encoded)


def test_several_destinations_get_one_more_slave_on_the_byte_tap():
    two = job(0, [{"output_stream_url": "rtmp://a/live/k1"}, {"output_stream_url": "rtmp://b/l/k"}])
    slaves = build_restream_args(job=two, tap="pipe:7")[-1].split("|")
    assert slaves[-1] == "[f=mpegts:onfail=ignore]pipe:7"  # counted by the supervisor
    assert len(slaves) == 3
    one = job(0, [{"output_stream_url": "rtmp://a/live/k1"}])
    assert "pipe:7" not in build_restream_args(job=one, tap="pipe:7")  # FFmpeg measures one


def test_transcoding_is_shared_by_every_destination():
    args = build_restream_args(
        job=job(
            0,
            video_transcoding="libx264",
            output_video_bitrate=2500,
            frame_width=1280,
            frame_height=720,
            audio_transcoding="aac",
            output_audio_bitrate=128,
            sample_rate=48000,
        )
    )
    assert args[args.index("-c:v") + 1] == "libx264"
    assert "scale=1280:720" in args[args.index("-filter:v") + 1]
    assert args[args.index("-c:a") + 1] == "aac"
    assert args[args.index("-b:a") + 1] == "128k"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("[fifo @ 0x55] Error opening rtmp://h/app/k: Connection refused", "connection_refused"),
        (
            "[tcp @ 0x7f] Connection to tcp://h:1935?tcp_nodelay=0 failed: Connection refused",
            "connection_refused",
        ),
        ("[rtmp @ 0x1] Server error: Authentication failed.", "auth_rejected"),
        ("[rtmp @ 0x1] Server error: NetStream.Publish.BadName", "auth_rejected"),
        (
            "12:00:00/SRT:RcvQ:w1!W:SRT.cn: processAsyncConnectRequest: REJECT reported from HS "
            "processing: Password required or unexpected - not processing further",
            "auth_rejected",
        ),
        ("[srt @ 0x1] Connection setup failure: connection timed out", "timeout"),
        ("[http @ 0x1] HTTP error 404 Not Found", "not_found"),
        ("rtmp://h/app/k: Broken pipe", "protocol_error"),
        ("frame=100 fps=25", None),
    ],
)
def test_failures_are_classified_from_ffmpeg_messages(line, kind):
    assert classify(line) == kind


def test_the_most_specific_failure_wins():
    tail = ["srt://h:1: Input/output error", "... REJECT reported: Password required"]
    assert classify_lines(tail) == "auth_rejected"
    assert classify_lines(["nothing useful"]) == "unknown"


# -- split restreams (issue 20 item 8): a relay stage and one process per destination ------


def test_relay_stage_encodes_once_for_the_strictest_container_into_the_relay_server():
    from reelhouse.common.ffmpeg.restream_args import build_relay_args

    two = job(0, [{}, {"output_type": "OUTPUT_TYPE_SRT_URL",
                       "output_stream_url": "srt://127.0.0.1:2035"}],
              video_transcoding="libx264", output_video_bitrate=2500)  # fmt: skip
    target = "srt://127.0.0.1:6001?streamid=publisher/abc&passphrase=x"
    args = build_relay_args(job=two, publish_url=target, probe_ms=400)
    assert args[-3:] == ["-f", "mpegts", target]
    assert args.count("libx264") == 1  # one encode, whatever the number of destinations
    assert "tee" not in args
    assert "-tag:v" not in args
    assert args[args.index("-analyzeduration") + 1] == "400000"
    assert args[args.index("-i") + 1] == "srt://127.0.0.1:1935"


def test_destination_copies_the_relay_from_the_fanout_into_its_own_muxer(tmp_path: Path):
    from reelhouse.common.ffmpeg.restream_args import build_destination_args

    read = "srt://127.0.0.1:6000?streamid=read/r/j&latency=120000"
    rtmp = job(0).output[0]
    args = build_destination_args(output=rtmp, read_url=read, send_buffer_bytes=262144)
    assert args[args.index("-i") + 1] == read
    assert args[args.index("-protocol_whitelist") + 1] == "srt"
    assert args[args.index("-c") + 1] == "copy"
    assert args[-1] == "rtmp://a.rtmp.youtube.com/live2/example-stream-key"
    assert args[args.index("-f", args.index("-i")) + 1] == "flv"
    assert args[args.index("-send_buffer_size") + 1] == "262144"  # a stall is seen soon
    assert "-flvflags" in args  # a plain muxer, not behind tee's FIFO
    srt = job(1).output[0]
    args = build_destination_args(output=srt, read_url=read, send_buffer_bytes=262144)
    assert args[-3:] == ["-f", "mpegts", "srt://127.0.0.1:2035"]
    assert "-send_buffer_size" not in args  # TCP only
    hls = job(2, [{"output_type": "OUTPUT_TYPE_HLS"}]).output[0]
    args = build_destination_args(output=hls, read_url=read, hls_dir=tmp_path)
    assert args[-1] == str(tmp_path / "index.m3u8")
