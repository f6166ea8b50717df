"""Schedule maths with fixed instants: one-off and weekly windows, zones, DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from reelhouse.common.contracts.media import Schedule
from reelhouse.common.schedule import inside, next_window, windows_between


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_one_off_window_before_inside_and_after():
    s = Schedule(start_at=utc(2026, 5, 1, 10), stop_at=utc(2026, 5, 1, 11))
    assert next_window(s, utc(2026, 5, 1, 9)) == (utc(2026, 5, 1, 10), utc(2026, 5, 1, 11))
    assert not inside(s, utc(2026, 5, 1, 9, 59, 59))
    assert inside(s, utc(2026, 5, 1, 10))  # start inclusive
    assert inside(s, utc(2026, 5, 1, 10, 59, 59))
    assert not inside(s, utc(2026, 5, 1, 11))  # stop exclusive
    assert next_window(s, utc(2026, 5, 1, 11)) is None


def test_open_ended_one_off_windows():
    start_only = Schedule(start_at=utc(2026, 5, 1, 10))
    assert next_window(start_only, utc(2026, 6, 1)) == (utc(2026, 5, 1, 10), None)
    assert inside(start_only, utc(2030, 1, 1))
    stop_only = Schedule(stop_at=utc(2026, 5, 1, 10))
    now = utc(2026, 5, 1, 9)
    assert next_window(stop_only, now) == (now, utc(2026, 5, 1, 10))
    assert not inside(stop_only, utc(2026, 5, 1, 10))


def test_naive_one_off_times_are_read_in_the_schedule_zone():
    s = Schedule(start_at=datetime(2026, 7, 1, 9), stop_at=datetime(2026, 7, 1, 10),
                 timezone="Europe/Berlin")  # fmt: skip
    assert next_window(s, utc(2026, 7, 1)) == (utc(2026, 7, 1, 7), utc(2026, 7, 1, 8))


def test_weekly_window_in_winter_and_summer_time():
    s = Schedule(weekly=[{"days": ["mon"], "start": "09:00", "stop": "10:00"}],
                 timezone="Europe/Berlin")  # fmt: skip
    # Monday 2026-01-05 (CET, UTC+1) and Monday 2026-07-06 (CEST, UTC+2).
    assert next_window(s, utc(2026, 1, 3)) == (utc(2026, 1, 5, 8), utc(2026, 1, 5, 9))
    assert next_window(s, utc(2026, 7, 4)) == (utc(2026, 7, 6, 7), utc(2026, 7, 6, 8))
    assert inside(s, utc(2026, 7, 6, 7, 30))
    assert not inside(s, utc(2026, 7, 6, 8, 30))  # 10:30 local


def test_weekly_window_across_the_spring_dst_change_is_an_hour_shorter():
    # Europe/Berlin goes from CET to CEST on Sunday 2026-03-29 at 02:00 local (01:00 UTC).
    s = Schedule(weekly=[{"days": ["sat"], "start": "22:00", "stop": "06:00"}],
                 timezone="Europe/Berlin")  # fmt: skip
    start, stop = next_window(s, utc(2026, 3, 28, 12))
    assert start == utc(2026, 3, 28, 21)  # 22:00 CET
    assert stop == utc(2026, 3, 29, 4)  # 06:00 CEST
    assert stop - start == timedelta(hours=7)
    # The same window a week earlier (no change) lasts 8 hours.
    start, stop = next_window(s, utc(2026, 3, 21, 12))
    assert stop - start == timedelta(hours=8)


def test_weekly_window_across_the_autumn_dst_change_is_an_hour_longer():
    # CEST -> CET on Sunday 2026-10-25 at 03:00 local (01:00 UTC).
    s = Schedule(weekly=[{"days": ["sun"], "start": "00:30", "stop": "04:00"}],
                 timezone="Europe/Berlin")  # fmt: skip
    start, stop = next_window(s, utc(2026, 10, 24, 12))
    assert start == utc(2026, 10, 24, 22, 30)  # 00:30 CEST
    assert stop == utc(2026, 10, 25, 3)  # 04:00 CET
    assert stop - start == timedelta(hours=4, minutes=30)


def test_nonexistent_and_ambiguous_local_times():
    spring = Schedule(weekly=[{"days": ["sun"], "start": "02:30", "stop": "05:00"}],
                      timezone="Europe/Berlin")  # fmt: skip
    start, stop = next_window(spring, utc(2026, 3, 28))
    assert start == utc(2026, 3, 29, 1, 30)  # 02:30 does not exist: 03:30 CEST
    assert stop == utc(2026, 3, 29, 3)
    autumn = Schedule(weekly=[{"days": ["sun"], "start": "02:30", "stop": "05:00"}],
                      timezone="Europe/Berlin")  # fmt: skip
    start, _ = next_window(autumn, utc(2026, 10, 24))
    assert start == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)


def test_window_open_since_yesterday_and_next_week():
    s = Schedule(weekly=[{"days": ["fri"], "start": "20:00", "stop": "02:00"}])
    # Friday 2026-05-01 20:00 to Saturday 02:00 UTC; at Saturday 01:00 it is open.
    assert next_window(s, utc(2026, 5, 2, 1)) == (utc(2026, 5, 1, 20), utc(2026, 5, 2, 2))
    # After it closed, the next one is a week later.
    assert next_window(s, utc(2026, 5, 2, 2)) == (utc(2026, 5, 8, 20), utc(2026, 5, 9, 2))


def test_touching_windows_merge_and_bounds_clip():
    s = Schedule(
        weekly=[{"days": ["mon"], "start": "22:00", "stop": "02:00"},
                {"days": ["tue"], "start": "00:00", "stop": "06:00"}],
        start_at=utc(2026, 5, 4, 23), stop_at=utc(2026, 5, 20),
    )  # fmt: skip
    # Monday 2026-05-04: clipped to start at 23:00 by start_at, merged through Tuesday 06:00.
    assert next_window(s, utc(2026, 5, 4)) == (utc(2026, 5, 4, 23), utc(2026, 5, 5, 6))
    found = windows_between(s, utc(2026, 5, 4), utc(2026, 6, 1))
    assert len(found) == 3  # 4-5, 11-12, 18-19 May; then stop_at ends it
    assert next_window(s, utc(2026, 5, 19, 7)) is None


def test_schedule_validation():
    with pytest.raises(ValidationError):
        Schedule()
    with pytest.raises(ValidationError):
        Schedule(start_at=utc(2026, 1, 2), stop_at=utc(2026, 1, 1))
    with pytest.raises(ValidationError):
        Schedule(start_at=utc(2026, 1, 1), timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        Schedule(weekly=[{"days": ["monday"], "start": "09:00", "stop": "10:00"}])
    with pytest.raises(ValidationError):
        Schedule(weekly=[{"days": ["mon"], "start": "25:00", "stop": "10:00"}])
    # Stored as JSON and read back: the same instants.
    s = Schedule(start_at=datetime(2026, 7, 1, 9), timezone="Europe/Berlin")
    again = Schedule.model_validate(s.model_dump(mode="json"))
    assert again.start_at == s.start_at


def test_aligned_split_arguments_and_validation():
    from pathlib import Path

    from reelhouse.common.contracts.recording import RecordingIn
    from reelhouse.common.ffmpeg.recording_args import recording_output_args

    args = recording_output_args(output_format="mp4", target=Path("/r/x-%Y.mp4"),
                                 segment_seconds=600, align_to_clock=True)  # fmt: skip
    assert args[args.index("-segment_atclocktime") + 1] == "1"
    assert args[args.index("-reset_timestamps") + 1] == "1"  # an MP4 must start at 0
    ts = recording_output_args(output_format="mpegts", target=Path("/r/x-%Y.ts"),
                               segment_seconds=600, align_to_clock=True)  # fmt: skip
    assert ts[ts.index("-reset_timestamps") + 1] == "0"  # TS keeps one timeline
    plain = recording_output_args(output_format="mp4", target=Path("/r/x-%Y.mp4"),
                                  segment_seconds=600)  # fmt: skip
    assert "-segment_atclocktime" not in plain
    body = {
        "recording_name": "a", "output_format": "mp4",
        "input": {"input_type": "INPUT_TYPE_SRT_URL", "input_stream_url": "srt://127.0.0.1:9"},
        "recording_mode": "RECORDING_MODE_SPLIT_BY_TIME",
        "recording_mode_settings": {"minutes": 10, "align_to_clock": True},
    }  # fmt: skip
    assert RecordingIn.model_validate(body).config()["recording_mode_settings"]["align_to_clock"]
    plain_body = {**body, "recording_mode_settings": {"minutes": 10}}
    # Not set: the block reads back as the seed's clients send it.
    assert (
        "align_to_clock"
        not in RecordingIn.model_validate(plain_body).config()["recording_mode_settings"]
    )
    with pytest.raises(ValidationError):
        RecordingIn.model_validate({**body, "output_format": "m3u8"})
