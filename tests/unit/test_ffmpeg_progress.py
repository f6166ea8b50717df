"""The progress parser against captured FFmpeg 5.1 output and hand-written edge cases.

The fixtures are verbatim stdout of ffmpeg 5.1.9 (Debian 12), captured with::

    # ffmpeg_progress_av_transcode.txt: two H.264 renditions + AAC into fragmented MP4
    ffmpeg -hide_banner -nostdin -progress pipe:1 -nostats -loglevel error -re \
      -f lavfi -i testsrc2=size=640x360:rate=25 -f lavfi -i sine=frequency=440:sample_rate=48000 \
      -t 5 -map 0:v -map 0:v -map 1:a -c:v libx264 -preset ultrafast -g 25 -s:v:1 320x180 \
      -c:a aac -b:a 128k -movflags +frag_keyframe+empty_moov -y av.mp4

    # ffmpeg_progress_audio_mp3.txt: audio only (no frame/fps keys)
    ffmpeg -hide_banner -nostdin -progress pipe:1 -nostats -loglevel error -re \
      -f lavfi -i sine=frequency=1000:sample_rate=44100 -t 4 -c:a libmp3lame -b:a 128k -y a.mp3

    # ffmpeg_progress_copy_udp.txt: stream copy of a 6 s H.264/AAC MP4 to MPEG-TS over UDP
    ffmpeg -hide_banner -nostdin -progress pipe:1 -nostats -loglevel error -re -i src.mp4 \
      -c copy -f mpegts 'udp://127.0.0.1:45999?pkt_size=1316'

    # ffmpeg_progress_tee.txt: a restream's stream copy of a live SRT source (2 Mbit/s H.264 +
    # AAC) to two destinations through tee, as the restreamer ran it before its byte tap
    # (killed after about 20 s, so no progress=end)
    ffmpeg -progress pipe:1 -nostats -stats_period 1 -hide_banner -protocol_whitelist srt \
      -rw_timeout 10000000 -i srt://127.0.0.1:48519 -map 0:v:0? -c:v copy -map 0:a:0? \
      -c:a copy -tag:v 7 -tag:a 10 -y -f tee -use_fifo 1 -fifo_options attempt_recovery=1:... \
      '[f=flv:onfail=ignore]rtmp://127.0.0.1:34701/live/key|[f=mpegts:onfail=ignore]srt://...'
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reelhouse.common.ffmpeg.progress import ProgressParser, ProgressSnapshot, parse_bitrate_kbits

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def parse_file(name: str) -> list[ProgressSnapshot]:
    parser = ProgressParser()
    with (FIXTURES / name).open(encoding="utf-8", newline="") as lines:
        return [s for line in lines if (s := parser.feed(line)) is not None]


def feed_all(parser: ProgressParser, text: str) -> list[ProgressSnapshot]:
    return [s for line in text.splitlines() if (s := parser.feed(line)) is not None]


# -- captured output ---------------------------------------------------------------------------


def test_av_transcode_yields_one_snapshot_per_block() -> None:
    snaps = parse_file("ffmpeg_progress_av_transcode.txt")

    assert len(snaps) == 11
    assert [s.progress for s in snaps] == ["continue"] * 10 + ["end"]
    assert snaps[-1].ended
    assert not snaps[0].ended
    frames = [int(s.frame or "") for s in snaps]
    assert frames == sorted(frames)
    assert frames[-1] == 125


def test_av_transcode_first_block_has_no_bitrate_yet() -> None:
    first = parse_file("ffmpeg_progress_av_transcode.txt")[0]

    assert first.bitrate == "N/A"
    assert first.bitrate_kbits == 0
    assert first.frame == "1"
    assert first.fps == "0.00"
    assert first.out_time_ms == "0"
    assert first.out_time_s == 0.0
    assert first.speed == "0x"  # printed as "   0x": padding is stripped


def test_av_transcode_values_are_verbatim_and_normalized() -> None:
    snap = parse_file("ffmpeg_progress_av_transcode.txt")[3]

    assert snap == ProgressSnapshot(
        frame="39",
        fps="25.59",
        bitrate="1536.2kbits/s",
        bitrate_kbits=1536,
        total_size="262180",
        out_time_ms="1365333",
        speed="0.896x",
        progress="continue",
        drop_frames=0,
        dup_frames=0,
    )
    # FFmpeg 5.1's out_time_ms is microseconds: 1365333 is about 1.37 s, not 22 minutes.
    assert snap.out_time_s == pytest.approx(1.365333)


def test_av_transcode_padded_bitrate_is_stripped_and_rounded() -> None:
    snap = parse_file("ffmpeg_progress_av_transcode.txt")[1]

    assert snap.bitrate == "0.8kbits/s"
    assert snap.bitrate_kbits == 1


def test_av_transcode_last_block_reports_whole_run() -> None:
    last = parse_file("ffmpeg_progress_av_transcode.txt")[-1]

    assert last.bitrate_kbits == 2588
    assert last.total_size == "1621610"
    assert last.out_time_s == pytest.approx(5.013333)
    assert last.speed == "0.999x"


def test_audio_only_has_no_frame_or_fps() -> None:
    snaps = parse_file("ffmpeg_progress_audio_mp3.txt")

    assert len(snaps) == 9
    assert all(s.frame is None for s in snaps)
    assert all(s.fps is None for s in snaps)
    assert snaps[1].bitrate == "145.6kbits/s"
    assert snaps[1].bitrate_kbits == 146
    sizes = [int(s.total_size) for s in snaps]
    assert sizes == sorted(sizes)
    assert snaps[-1].ended
    assert snaps[-1].out_time_s == pytest.approx(4.023923)
    assert snaps[-1].speed == "1x"


def test_stream_copy_starts_with_unknown_bitrate_and_speed() -> None:
    snaps = parse_file("ffmpeg_progress_copy_udp.txt")

    assert len(snaps) == 13
    first, second = snaps[0], snaps[1]
    assert (first.bitrate, first.bitrate_kbits, first.speed) == ("N/A", 0, "N/A")
    assert first.frame == "0"
    assert first.total_size == "0"
    assert second.bitrate_kbits == 1898
    assert second.speed == "1.07x"
    assert all(s.bitrate_kbits > 1800 for s in snaps[1:])


def test_tee_reports_no_size_and_no_bitrate() -> None:
    snaps = parse_file("ffmpeg_progress_tee.txt")

    assert len(snaps) == 19
    assert all((s.total_size, s.bitrate, s.bitrate_kbits) == ("N/A", "N/A", 0) for s in snaps)
    assert snaps[-1].out_time_s == pytest.approx(20.32)
    assert float(snaps[-1].fps or 0) > 0  # frames are counted; only the size is missing


def test_a_counted_size_gives_the_bitrate_as_ffmpeg_computes_it() -> None:
    last = parse_file("ffmpeg_progress_tee.txt")[-1]  # out_time 20.32 s

    filled = last.with_total_size(5_486_400)  # 5,486,400 B * 8 / 20.32 s = 2160.0 kbit/s
    assert (filled.total_size, filled.bitrate, filled.bitrate_kbits) == (
        "5486400", "2160.0kbits/s", 2160,
    )  # fmt: skip
    assert (filled.frame, filled.fps, filled.out_time_ms) == (last.frame, last.fps, "20320000")
    # FFmpeg's own: total_size * 8 / out_time, "%.1fkbits/s" (compare the copy_udp fixture).
    own = parse_file("ffmpeg_progress_copy_udp.txt")[-1]
    assert own.out_time_s is not None
    again = own.with_total_size(int(own.total_size))
    assert abs(float(again.bitrate[:-7]) - float(own.bitrate[:-7])) <= 0.1
    unknown = ProgressSnapshot(progress="continue").with_total_size(1000)
    assert (unknown.total_size, unknown.bitrate, unknown.bitrate_kbits) == ("1000", "N/A", 0)


def test_crlf_line_endings_parse_the_same() -> None:
    text = (FIXTURES / "ffmpeg_progress_copy_udp.txt").read_text(encoding="utf-8")
    parser = ProgressParser()
    crlf = [s for line in text.splitlines() if (s := parser.feed(line + "\r\n")) is not None]

    assert crlf == parse_file("ffmpeg_progress_copy_udp.txt")


# -- hand-written edge cases -------------------------------------------------------------------


def test_seed_example_round_trips_to_the_api_fields() -> None:
    block = (
        "frame=1532\nfps=25.0\nstream_0_0_q=28.0\nbitrate=1842.1kbits/s\ntotal_size=414832640\n"
        "out_time_us=61200000\nout_time_ms=61200000\nout_time=00:01:01.200000\n"
        "dup_frames=0\ndrop_frames=0\nspeed=1.00x\nprogress=continue\n"
    )
    [snap] = feed_all(ProgressParser(), block)

    dumped = snap.model_dump(exclude={"drop_frames", "dup_frames"})
    assert dumped == {
        "frame": "1532",
        "fps": "25.0",
        "bitrate": "1842.1kbits/s",
        "bitrate_kbits": 1842,
        "total_size": "414832640",
        "out_time_ms": "61200000",
        "speed": "1.00x",
        "progress": "continue",
    }
    assert snap.out_time_s == pytest.approx(61.2)


def test_nothing_is_returned_until_the_block_ends() -> None:
    parser = ProgressParser()

    assert parser.feed("frame=10") is None
    assert parser.feed("bitrate=100.0kbits/s") is None
    snap = parser.feed("progress=continue")
    assert snap is not None
    assert snap.frame == "10"


def test_blank_partial_and_unknown_lines_are_ignored() -> None:
    text = (
        "\n"
        "   \n"
        "frame=7\n"
        "stream_0_0_q=20.0\n"
        "stream_0_1_q=19.0\n"
        "stream_1_0_q=-1.0\n"
        "out_time=00:00:00.280000\n"
        "something_new_in_ffmpeg_9=42\n"
        "garbage without equals sign\n"
        "fps=25.00\n"
        "progress=continue\n"
    )
    [snap] = feed_all(ProgressParser(), text)

    assert snap.frame == "7"
    assert snap.fps == "25.00"
    assert snap.bitrate == "N/A"
    assert snap.bitrate_kbits == 0
    assert snap.total_size == "N/A"
    assert snap.out_time_ms == "N/A"
    assert snap.out_time_s is None
    assert snap.drop_frames is None
    assert snap.dup_frames is None


def test_all_values_not_available() -> None:
    text = (
        "frame=N/A\nfps=N/A\nbitrate=N/A\ntotal_size=N/A\nout_time_us=N/A\nout_time_ms=N/A\n"
        "out_time=N/A\ndup_frames=N/A\ndrop_frames=N/A\nspeed=N/A\nprogress=continue\n"
    )
    [snap] = feed_all(ProgressParser(), text)

    assert snap.frame == "N/A"
    assert snap.bitrate_kbits == 0
    assert snap.out_time_ms == "N/A"
    assert snap.out_time_s is None
    assert snap.drop_frames is None
    assert snap.speed == "N/A"


def test_keys_do_not_leak_into_the_next_block() -> None:
    text = "frame=5\nbitrate=10.0kbits/s\nprogress=continue\nspeed=2x\nprogress=continue\n"
    first, second = feed_all(ProgressParser(), text)

    assert first.frame == "5"
    assert first.bitrate_kbits == 10
    assert second.frame is None
    assert second.bitrate == "N/A"
    assert second.speed == "2x"


def test_joining_mid_block_yields_a_partial_snapshot() -> None:
    # The reader attached after "frame=" had been written: the first line is a fragment.
    text = "ps=25.00\nbitrate=512.0kbits/s\nprogress=continue\nframe=12\nprogress=end\n"
    first, second = feed_all(ProgressParser(), text)

    assert first.fps is None
    assert first.bitrate_kbits == 512
    assert second.frame == "12"
    assert second.ended


def test_line_cut_short_at_end_of_stream() -> None:
    parser = ProgressParser()
    feed_all(parser, "frame=9\nbitrate=18")  # the process died mid-line

    snap = parser.feed("progress=end")
    assert snap is not None
    assert snap.bitrate == "18"
    assert snap.bitrate_kbits == 0  # no unit: not a bitrate we can read


def test_out_time_us_stands_in_for_a_missing_out_time_ms() -> None:
    [snap] = feed_all(ProgressParser(), "out_time_us=2500000\nprogress=continue\n")

    assert snap.out_time_ms == "2500000"
    assert snap.out_time_s == pytest.approx(2.5)


def test_drop_and_dup_frames_are_integers() -> None:
    [snap] = feed_all(ProgressParser(), "dup_frames=3\ndrop_frames=17\nprogress=continue\n")

    assert snap.dup_frames == 3
    assert snap.drop_frames == 17


def test_value_containing_equals_sign_is_kept_whole() -> None:
    [snap] = feed_all(ProgressParser(), "speed=a=b\nprogress=continue\n")

    assert snap.speed == "a=b"


def test_snapshot_is_immutable() -> None:
    [snap] = feed_all(ProgressParser(), "frame=1\nprogress=continue\n")

    with pytest.raises(ValueError, match="frozen"):
        snap.frame = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("printed", "kbits"),
    [
        ("1842.1kbits/s", 1842),
        ("1842.6kbits/s", 1843),
        ("   0.8kbits/s", 1),
        ("   0.3kbits/s", 0),
        (" 145.6kbits/s", 146),
        ("2.5Mbits/s", 2500),
        ("64000bits/s", 64),
        ("N/A", 0),
        ("", 0),
        ("fast", 0),
        ("-1.0kbits/s", 0),
    ],
)
def test_parse_bitrate_kbits(printed: str, kbits: int) -> None:
    assert parse_bitrate_kbits(printed) == kbits
