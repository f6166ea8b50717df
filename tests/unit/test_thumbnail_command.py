"""The live thumbnail: a second FFmpeg output of a recording (the dashboard shows it per job).

That FFmpeg writes the JPEG from a live SRT source is checked by the browser test
(``tests/browser/test_dashboard.py``); here the argument list is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.seeds import recording_payload

from reelhouse.common.contracts.recording import RecordingIn
from reelhouse.common.ffmpeg.recording_args import (
    THUMBNAIL_DECODE_ARGS,
    THUMBNAIL_EVERY_S,
    THUMBNAIL_FILE_NAME,
    build_recording_args,
    thumbnail_output_args,
)

THUMB = Path("/rec/job") / THUMBNAIL_FILE_NAME


def job(**changes: object) -> RecordingIn:
    return RecordingIn.model_validate(recording_payload(0, **changes))


def test_thumbnail_is_a_second_output_after_the_recording() -> None:
    rec = job()
    args = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.mp4"), thumbnail=THUMB)
    target = args.index("/rec/a.mp4")
    tail = args[target + 1 :]
    assert tail == thumbnail_output_args(THUMB)
    assert tail[-1] == str(THUMB)
    # Options of the second output: first video track only, one small JPEG overwritten in place.
    assert tail[:2] == ["-map", "0:v:0?"]
    assert "-an" in tail
    # The first picture at once, then one per period (select, not fps: see THUMBNAIL_SELECT),
    # each written as it comes (vfr: no duplicated frames to fill a constant rate).
    graph = tail[tail.index("-filter:v") + 1]
    assert graph.startswith("select='isnan(prev_selected_t)+")
    assert f"prev_selected_t\\,{THUMBNAIL_EVERY_S})'" in graph
    assert graph.endswith(",scale=320:-2")
    assert tail[tail.index("-fps_mode") + 1] == "vfr"
    assert tail[tail.index("-f") + 1] == "image2"
    assert tail[tail.index("-update") + 1] == "1"
    assert tail[tail.index("-c:v") + 1] == "mjpeg"
    # The recording's own options come before its target, untouched; the copied video's
    # decoder, there only for the thumbnail, decodes keyframes alone (an input option).
    without = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.mp4"))
    assert args[1:3] == list(THUMBNAIL_DECODE_ARGS)
    assert args.index("-skip_frame:v") < args.index("-i")
    assert args[3 : target + 1] == without[1:]


def test_an_encoded_video_decodes_every_frame() -> None:
    base = recording_payload(0)["transcoding"]
    rec = job(transcoding={**base, "video_transcoding": "libx264"})
    args = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.mp4"), thumbnail=THUMB)
    assert "image2" in args
    assert "-skip_frame:v" not in args  # the encoder needs every frame


def test_no_thumbnail_unless_asked() -> None:
    rec = job()
    args = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.mp4"))
    assert args[-1] == "/rec/a.mp4"
    assert "image2" not in args
    assert "-skip_frame:v" not in args


def test_mp3_has_no_video_so_no_thumbnail() -> None:
    rec = job(output_format="mp3")
    args = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.mp3"), thumbnail=THUMB)
    assert args[-1] == "/rec/a.mp3"
    assert "image2" not in args
    assert "-skip_frame:v" not in args


@pytest.mark.parametrize("fmt", ["mkv", "flv", "mpegts", "avi", "m3u8"])
def test_thumbnail_follows_every_video_format(fmt: str) -> None:
    rec = job(output_format=fmt)
    args = build_recording_args(inp=rec.input, job=rec, target=Path("/rec/a.x"), thumbnail=THUMB)
    assert args[-1] == str(THUMB)


def test_split_mode_keeps_the_segment_target_before_the_thumbnail() -> None:
    rec = job(
        recording_mode="RECORDING_MODE_SPLIT_BY_TIME",
        recording_mode_settings={"hours": 0, "minutes": 0, "seconds": 10},
    )
    target = Path("/rec/.seg-%05d.mp4")
    args = build_recording_args(inp=rec.input, job=rec, target=target, thumbnail=THUMB)
    assert args[args.index(str(target)) + 1 :] == thumbnail_output_args(THUMB)


def test_a_name_without_a_number_pattern_is_refused() -> None:
    # FFmpeg's global -n would refuse an existing plain-named image2 target at every restart.
    with pytest.raises(ValueError, match="%d"):
        thumbnail_output_args(Path("/rec/job/.thumb.jpg"))
