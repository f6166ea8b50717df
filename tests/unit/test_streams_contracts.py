"""Stream contracts, the probe arguments and the prober's pure helpers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reelhouse.common.contracts.streams import (
    AudioSettings,
    ProbeReply,
    StreamIn,
    StreamInfoBody,
    StreamUpdate,
)
from reelhouse.common.errors import Unavailable, UpstreamError, UpstreamTimeout, ValidationFailed
from reelhouse.common.ffmpeg.probe import live_probe_args
from reelhouse.common.micro import error_from_reply
from reelhouse.prober.monitor import meta_data
from reelhouse.prober.probes import checked_url, public_url

PRESET = {
    "name": "Main stage publisher",
    "role_name": "publisher",
    "stream_id": "publisher/main-stage/srt-main",
    "entity_id": "680400000000000000000001",
    "module_name": "MODULE_SRT_SERVERS",
    "active": True,
}


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "/etc/passwd", "concat:a|b", "subfile,,start,0,end,0,,:/etc/passwd",
     "data:text/plain,x", "pipe:0", "gopher://x", "srt://", "srt://host:1 2"],
)  # fmt: skip
def test_only_network_urls_of_the_input_types_may_be_probed(url: str):
    with pytest.raises(ValidationError) as exc:
        StreamInfoBody(stream_url=url)
    assert exc.value.errors()[0]["loc"] == ("stream_url",)
    with pytest.raises(ValidationFailed) as refused:
        checked_url(url)
    assert refused.value.field == "stream_url"


@pytest.mark.parametrize(
    ("url", "whitelist"),
    [
        ("srt://127.0.0.1:1936?streamid=a", "srt"),
        ("rtmp://h/live/key", "rtmp,rtmps,tcp,tls,httpproxy"),
        ("https://h/live.m3u8", "http,https,tcp,tls,crypto,httpproxy"),
        ("rtsp://h/cam", "tcp,tls,httpproxy"),
        ("udp://127.0.0.1:5000", "udp"),
    ],
)
def test_probe_args_carry_the_input_types_whitelist(url: str, whitelist: str):
    args = live_probe_args(url)
    assert args[args.index("-protocol_whitelist") + 1] == whitelist
    assert args[-2:] == ["-i", url]
    assert "file" not in whitelist.split(",")
    with pytest.raises(ValueError, match="never probed"):
        live_probe_args("file:///etc/passwd")


def test_public_url_drops_credentials_and_query():
    assert public_url("srt://127.0.0.1:1936?streamid=x&passphrase=secret") == "srt://127.0.0.1:1936"
    assert public_url("rtmp://user:pw@host/live/s") == "rtmp://host/live/s"
    assert public_url("udp://[::1]:5000") == "udp://[::1]:5000"


def test_entity_model_and_default_audio_layout_are_derived():
    doc = StreamIn(**PRESET).document()
    assert doc["entityModel"] == "ServerModel"
    assert doc["audio_settings"]["streams"][0]["channel_layout"] == "stereo"
    rtmp = StreamIn(**{**PRESET, "module_name": "MODULE_RTMP_SERVERS"}).document()
    assert rtmp["entityModel"] == "RtmpServerModel"
    assert StreamUpdate(id="6806" + "0" * 20, name="x").changes() == {"name": "x"}


def test_audio_settings_round_trip_and_layout_checks():
    seed = {
        "streams": [
            {"id": 0, "name": "Commentary", "channel_layout": "mono",
             "channels": [{"id": "FC", "name": "Commentary"}]},
        ]
    }  # fmt: skip
    assert AudioSettings.model_validate(seed).model_dump(mode="json") == seed
    five_one = {"id": 1, "channel_layout": "5.1", "channels": [{"id": "FL"}] * 2}
    with pytest.raises(ValidationError):
        AudioSettings.model_validate({"streams": [five_one]})
    twice = {"id": 0, "channel_layout": "weird", "channels": []}
    with pytest.raises(ValidationError):
        AudioSettings.model_validate({"streams": [twice, twice]})


def test_meta_data_from_a_probe():
    reply = ProbeReply(
        streams=[
            {"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
             "avg_frame_rate": "30/1", "pix_fmt": "yuv420p", "profile": "High"},
            {"codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 2,
             "channel_layout": "stereo", "bit_rate": "128000"},
        ],
        format={"format_name": "mpegts", "bit_rate": "4128000"},
    )  # fmt: skip
    meta = meta_data(reply)
    assert meta["codec_name"] == "h264"
    assert meta["resolution"] == "1920x1080"
    assert meta["fps"] == "30/1"
    assert meta["channel_layout"] == "stereo"
    assert meta["bit_rate"] == 4128000
    assert meta["streams"] == 2
    no_rate = meta_data(reply.model_copy(update={"format": {"format_name": "mpegts"}}))
    assert no_rate["bit_rate"] == 128000


@pytest.mark.parametrize(
    ("code", "cls"),
    [("400", ValidationFailed), ("502", UpstreamError), ("503", Unavailable),
     ("504", UpstreamTimeout)],
)  # fmt: skip
def test_service_errors_map_to_the_error_tree(code: str, cls: type):
    headers = {"Nats-Service-Error": "boom", "Nats-Service-Error-Code": code, "Retry-After": "2"}
    error = error_from_reply(headers, b'{"message": "nice words", "field": "stream_url"}')
    assert type(error) is cls
    assert (error.message, error.field, error.headers) == (
        "nice words",
        "stream_url",
        {"Retry-After": "2"},
    )
