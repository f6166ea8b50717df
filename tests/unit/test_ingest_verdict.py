"""Who may publish or read on an ingest server (reelhouse.ingest.verdict) and the URLs rows get
(reelhouse.common.ingest): pure functions, every rule of docs/INGEST.md's refusal table that the
service decides."""

from __future__ import annotations

import pytest

from reelhouse.common.contracts.ingest import SrtServerIn
from reelhouse.common.ingest import Contribution, fanout_url, publish_url, stream_name
from reelhouse.ingest.node import dataplane_argv
from reelhouse.ingest.settings import IngestSettings
from reelhouse.ingest.verdict import decide, host_matches, remote_ip

SERVER = {"_id": "680400000000000000000001", "proto": "srt", "active": True,
          "server_passphrase": "server-secret-1"}  # fmt: skip
RTMP = {"_id": "680500000000000000000001", "proto": "rtmp", "active": True}


def row(stream_id: str, role: str = "publisher", **kw):
    return {"_id": f"row-{stream_id}", "stream_id": stream_id, "role_name": role,
            "active": True, "host": "", "passphrase": "", **kw}  # fmt: skip


def connect(name: str, role: str = "publish", **kw):
    return {"ev": "connect", "req": "r1", "proto": "srt", "name": name, "role": role,
            "via": "server", "remote": "10.0.0.5:40123", "key": "", **kw}  # fmt: skip


def test_a_publisher_row_admits_its_publisher_with_the_server_passphrase():
    v = decide(connect("main-stage/srt-main"), SERVER, [row("publisher/main-stage/srt-main")])
    assert v.allow
    assert v.passphrase == "server-secret-1"
    assert v.command("r1") == {"op": "verdict", "req": "r1", "allow": True,
                               "passphrase": "server-secret-1"}  # fmt: skip


def test_a_row_passphrase_overrides_the_servers():
    rows = [row("publisher/cam", passphrase="row-secret-12")]
    assert decide(connect("cam"), SERVER, rows).passphrase == "row-secret-12"


@pytest.mark.parametrize(
    ("event", "server", "rows", "reason"),
    [
        (connect("nobody"), SERVER, [row("publisher/cam")], "unknown_stream"),
        (connect("cam"), None, [row("publisher/cam")], "unknown_stream"),
        (connect("cam"), {**SERVER, "active": False}, [row("publisher/cam")], "inactive"),
        (connect("cam"), SERVER, [row("publisher/cam", active=False)], "inactive"),
        (connect("cam"), SERVER, [row("publisher/cam", host="192.0.2.9")], "forbidden_host"),
        # a receiver row does not let anyone publish
        (connect("cam"), SERVER, [row("receiver/cam", "receiver")], "unknown_stream"),
        (connect("cam", via="fanout", role="read"), SERVER, [], "unknown_stream"),
        (connect("cam", via="fanout", role="read"), SERVER,
         [row("publisher/cam", active=False)], "inactive"),
    ],
)  # fmt: skip
def test_refusals_say_why(event, server, rows, reason):
    v = decide(event, server, rows)
    assert not v.allow
    assert v.reason == reason
    assert v.command("r1") == {"op": "verdict", "req": "r1", "allow": False, "reason": reason}


def test_host_binding_admits_the_bound_address_only():
    rows = [row("receiver/return", "receiver", host="198.51.100.24")]
    ok = decide(connect("return", "read", remote="198.51.100.24:5000"), SERVER, rows)
    assert ok.allow
    bad = decide(connect("return", "read", remote="198.51.100.25:5000"), SERVER, rows)
    assert bad.reason == "forbidden_host"
    # a host name is compared by the addresses the service resolved
    named = [row("receiver/return", "receiver", host="encoder.example")]
    resolved = {"encoder.example": frozenset({"198.51.100.24"})}
    assert decide(connect("return", "read", remote="198.51.100.24:1"), SERVER, named,
                  resolved=resolved).allow  # fmt: skip


def test_readers_on_the_server_port_use_the_receiver_row_else_the_publisher_row():
    rows = [row("publisher/cam"), row("receiver/cam", "receiver", passphrase="reader-secret")]
    assert decide(connect("cam", "read"), SERVER, rows).passphrase == "reader-secret"
    assert decide(connect("cam", "read"), SERVER, rows[:1]).passphrase == "server-secret-1"


def test_fanout_readers_are_the_engines_jobs_without_passphrase():
    v = decide(connect("cam", "read", via="fanout"), SERVER, [row("publisher/cam")])
    assert v.allow
    assert v.passphrase == ""


def test_rtmp_key_is_compared_with_the_row_passphrase():
    rows = [row("studio/live/program", passphrase="stream-key-123")]
    event = {**connect("studio/live/program"), "proto": "rtmp"}
    assert decide({**event, "key": "stream-key-123"}, RTMP, rows).allow
    assert decide({**event, "key": "wrong"}, RTMP, rows).reason == "bad_passphrase"
    assert decide(event, RTMP, rows).reason == "bad_passphrase"
    # no key on the row: none needed
    assert decide(event, RTMP, [row("studio/live/program")]).allow


def test_remote_addresses_parse():
    assert remote_ip("10.0.0.5:40123") == "10.0.0.5"
    assert remote_ip("[::1]:5000") == "::1"
    assert host_matches("", "anything")
    assert host_matches("::ffff:10.0.0.5", "[::ffff:10.0.0.5]:1")
    assert not host_matches("10.0.0.6", "10.0.0.5:1")


def test_stream_names_and_urls():
    assert stream_name("srt", "publisher/main-stage/srt-main") == "main-stage/srt-main"
    assert stream_name("srt", "receiver/main-stage/return-feed") == "main-stage/return-feed"
    assert stream_name("rtmp", "studio/live/program") == "studio/live/program"
    assert (
        publish_url("srt", host="203.0.113.7", port=10080, name="main/cam", passphrase="a b&c")
        == "srt://203.0.113.7:10080?streamid=publisher/main/cam&passphrase=a%20b%26c"
    )
    assert (
        publish_url("rtmp", host="h", port=1935, name="live/stage", passphrase="k1")
        == "rtmp://h:1935/live/stage?key=k1"
    )
    c = Contribution.from_value({"server_id": SERVER["_id"], "name": "main/cam", "proto": "srt",
                                 "node": "ingest-1", "fanout": "127.0.0.1:6000",
                                 "publisher": True})  # fmt: skip
    assert c.reader_url(latency_ms=200) == fanout_url("127.0.0.1:6000", SERVER["_id"], "main/cam",
                                                      latency_ms=200)  # fmt: skip
    assert c.reader_url() == (
        f"srt://127.0.0.1:6000?streamid=read/{SERVER['_id']}/main/cam&latency=120000"
    )


@pytest.mark.parametrize("length", [1, 9, 80])
def test_server_passphrase_must_be_10_to_79_characters(length):
    with pytest.raises(ValueError, match="79"):
        SrtServerIn(server_name="s", server_port=10000, server_passphrase="x" * length)
    assert (
        SrtServerIn(server_name="s", server_port=10000, server_passphrase="").server_latency == 120
    )


def test_dataplane_flags_come_from_the_settings():
    s = IngestSettings(ingest_dataplane_path="/bin/dp", ingest_fanout_port=6100,
                       ingest_gap_hold_s=4, ingest_takeover_idle_s=0.5)  # fmt: skip
    argv = dataplane_argv(s)
    assert argv[0] == "/bin/dp"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags == {"-fanout": "127.0.0.1:6100", "-stats-interval": "1s", "-gap-hold": "4s",
                     "-takeover-idle": "0.5s", "-verdict-timeout": "3s"}  # fmt: skip
