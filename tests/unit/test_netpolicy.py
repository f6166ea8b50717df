"""The address policy's pure parts: categories, the allow-list, pinning, bind-only URLs."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from reelhouse.common.ffmpeg.failures import request_error_class
from reelhouse.common.netpolicy import (
    BIND_ONLY,
    AddressRefused,
    NetPolicy,
    Unresolvable,
    parse_networks,
    pin_url,
    url_target,
)
from reelhouse.common.settings import CommonSettings


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
        ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
        ("fd12::1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("100.64.0.1", "reserved"), ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ],
)  # fmt: skip
def test_refused_by_default(address: str, reason: str) -> None:
    assert NetPolicy().refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "239.1.1.1", "ff0e::1"])
def test_public_and_multicast_are_allowed(address: str) -> None:
    assert NetPolicy().refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_opens_what_it_covers_but_never_metadata() -> None:
    policy = NetPolicy.from_setting("127.0.0.0/8, ::1/128,169.254.0.0/16")
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.1.1")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) == "cloud metadata"
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) == "private"
    with pytest.raises(AddressRefused, match="private"):
        policy.check_address("db.internal", "10.0.0.1")


def test_networks_setting_is_validated_and_normalised() -> None:
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks("127.0.0.1,10.0.0.0/8")] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
    ]
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("127.0.0.0/8,localhost")
    settings = CommonSettings(probe_allow_networks="127.0.0.0/8 , ::1")
    assert settings.probe_allow_networks == "127.0.0.0/8,::1/128"
    with pytest.raises(ValueError, match="not a network"):
        CommonSettings(probe_allow_networks="everything")


async def test_names_are_resolved_and_metadata_names_refused() -> None:
    with pytest.raises(AddressRefused, match="loopback"):
        await NetPolicy().resolve("localhost", 80)
    with pytest.raises(AddressRefused, match="cloud metadata"):
        await NetPolicy().resolve("metadata.google.internal", 80)
    allowed = NetPolicy.from_setting("127.0.0.0/8")
    assert ipaddress.ip_address("127.0.0.1") in await allowed.resolve("localhost", 80)


async def test_a_resolver_that_does_not_answer_costs_a_name_one_timeout(monkeypatch) -> None:
    """A hung lookup is refused as unreachable after ``resolve_timeout_s`` (the setting), and
    the name is refused again at once for a while; the policy is the same (still refused)."""
    calls: list[str] = []
    release = threading.Event()

    def hung(host, *args, **kwargs):
        calls.append(host)
        release.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    policy = CommonSettings(resolve_timeout_s=0.2).net_policy()
    assert policy.resolve_timeout_s == 0.2
    name = f"hung-{time.monotonic_ns()}.example"
    try:
        started = time.monotonic()
        with pytest.raises(Unresolvable):
            await policy.resolve(name, 80)
        assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(Unresolvable, match="recently"):
            await policy.resolve(name.upper(), 80)
        assert time.monotonic() - started < 0.1
        assert calls == [name]
    finally:
        release.set()


@pytest.mark.parametrize(
    ("url", "role", "target"),
    [
        ("udp://127.0.0.1:5000", "input", BIND_ONLY),
        ("udp://10.0.0.1:5000", "output", ("10.0.0.1", 5000)),
        ("srt://:9000?mode=listener", "input", BIND_ONLY),
        ("srt://0.0.0.0:9000?mode=listener", "output", BIND_ONLY),
        ("srt://@:9000", "input", BIND_ONLY),
        ("rtp://0.0.0.0:5004", "input", BIND_ONLY),
        ("rtsp://0.0.0.0:554/x", "input", ("0.0.0.0", 554)),
        ("srt://host:9000?streamid=#!::r=a", "input", ("host", 9000)),
        ("https://h.example/x.m3u8", "input", ("h.example", None)),
    ],
)
def test_what_a_url_calls(url: str, role: str, target: object) -> None:
    assert url_target(url, role=role) == target  # type: ignore[arg-type]


def test_pinning_keeps_everything_but_the_name() -> None:
    v4, v6 = ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")
    assert (
        pin_url("srt://u:p@src.example:9000?streamid=#!::r=live,m=request", v4)
        == "srt://u:p@203.0.113.7:9000?streamid=#!::r=live,m=request"
    )
    assert pin_url("rtmp://src.example/live/key", v6) == "rtmp://[2001:db8::7]/live/key"


@pytest.mark.parametrize(
    ("lines", "error_class"),
    [
        (["Connection to tcp://h:1935 failed: Connection refused"], "refused"),
        (["http://h/x: Server returned 5XX Server Error reply"], "refused"),
        (["Connection setup failure: connection timed out"], "timeout"),
        (["Failed to resolve hostname nope: Name or service not known"], "unreachable"),
        (["http://h/x: Invalid data found when processing input"], "not_media"),
        ([], "not_media"),
    ],
)
def test_stderr_is_read_as_a_class(lines: list[str], error_class: str) -> None:
    assert request_error_class(lines) == error_class
