"""The playback timeline (issue 24): pieces from file records and their integrity data, spans,
gaps and their causes; the concat list's in and out points. Pure functions, no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bson import ObjectId

from reelhouse.api.playback import timeline as tl
from reelhouse.api.playback.service import Entry, FileFacts, ffconcat
from reelhouse.api.playback.sources import Source

T0 = datetime(2026, 3, 24, 12, 0, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def segment(began: float, length: float, *, node: str = "n1", part: int = 1) -> dict:
    return {"_id": ObjectId(), "file_path": f"/r/{began}.ts", "duration_ms": int(length * 1000),
            "node": node, "part": part, "status": "ready",
            "integrity": {"periods": [{"from": s(began), "to": s(began + length),
                                       "duration_ms": int(length * 1000)}]}}  # fmt: skip


def pieces(*records: dict) -> list[tl.Piece]:
    return [p for r in records for p in tl.pieces_of_file(r)]


def test_segments_form_spans_and_a_gap_between_parts_is_an_interruption():
    records = [segment(0, 2), segment(2.05, 2), segment(9, 2, part=2)]
    line = tl.build(pieces(*records))
    assert [(x["start"], x["duration"]) for x in line.spans] == [
        ("2026-03-24T12:00:00.000Z", 4.0), ("2026-03-24T12:00:09.000Z", 2.0)]  # fmt: skip
    (gap,) = line.gaps
    assert gap == {"from": "2026-03-24T12:00:04.050Z", "to": "2026-03-24T12:00:09.000Z",
                   "duration_ms": 4950, "cause": "interruption"}  # fmt: skip


def test_failover_and_pause_causes():
    other_node = tl.build(pieces(segment(0, 2), segment(5, 2, node="n2")))
    assert other_node.gaps[0]["cause"] == "failover"
    paused = tl.build(pieces(segment(0, 2), segment(5, 2, part=2)), pauses=[(s(2.5), s(4.5))])
    assert paused.gaps[0]["cause"] == "pause"


def test_a_window_keeps_only_what_overlaps_it():
    line = tl.build(pieces(segment(0, 2), segment(2, 2), segment(10, 2)), start=s(3), end=s(11))
    assert [x["duration"] for x in line.spans] == [1.0, 1.0]
    assert len(line.pieces) == 2
    assert line.gaps[0]["duration_ms"] == 6000


def test_a_joined_file_has_a_piece_per_period_at_its_offset_and_its_gaps_cause():
    joined = {"_id": ObjectId(), "file_path": "/r/j.mp4", "duration_ms": 7000, "status": "ready",
              "integrity": {"periods": [
                  {"from": s(0), "to": s(3), "duration_ms": 3000},
                  {"from": s(10), "to": s(14), "duration_ms": 4000}],
                  "gaps": [{"after_part": 1, "from": s(3), "to": s(10), "duration_ms": 7000,
                            "cause": "pause"}]}}  # fmt: skip
    found = tl.pieces_of_file(joined)
    assert [(p.start, p.duration_s, p.offset_s) for p in found] == [(s(0), 3.0, 0.0),
                                                                   (s(10), 4.0, 3.0)]  # fmt: skip
    assert tl.build(found).gaps[0]["cause"] == "pause"


def test_a_publisher_gap_inside_a_part_splits_its_piece():
    record = segment(0, 6)
    record["integrity"]["periods"][0]["to"] = s(8)  # 6 s of media over 8 s of wall clock
    record["source_gaps"] = [{"from": s(2), "to": s(4), "duration_ms": 2000}]
    found = tl.pieces_of_file(record)
    assert [(p.start, p.duration_s, p.offset_s) for p in found] == [(s(0), 2.0, 0.0),
                                                                   (s(4), 4.0, 2.0)]  # fmt: skip
    assert tl.build(found).gaps[0]["cause"] == "publisher_gap"


def test_an_m3u8_recording_gives_a_piece_per_segment_at_its_program_date_time():
    text = "\n".join([
        "#EXTM3U", "#EXT-X-PROGRAM-DATE-TIME:2026-03-24T12:00:00.000+0000", "#EXTINF:2.0,",
        "a-00000.ts", "#EXTINF:2.0,", "a-00001.ts", "#EXT-X-DISCONTINUITY",
        "#EXT-X-PROGRAM-DATE-TIME:2026-03-24T12:00:10.000+0000", "#EXTINF:2.0,", "a-00002.ts",
        "#EXTINF:1.5,", "../escape.ts"])  # fmt: skip
    record = {"_id": ObjectId(), "file_path": "/r/a.m3u8"}
    found = tl.pieces_of_playlist(record, Path("/r/a.m3u8"), text)
    assert [(p.start, p.segment, p.segment_path.name) for p in found] == [
        (s(0), 0, "a-00000.ts"), (s(2), 1, "a-00001.ts"), (s(10), 2, "a-00002.ts")]  # fmt: skip
    assert found[0].run == found[1].run != found[2].run


def test_the_concat_list_points_are_in_the_files_own_timestamps():
    entries = [Entry(("a", None), Source(path=Path("/r/a.ts")), 1.5, 4.0, 4.0),
               Entry(("b", None), Source(path=Path("/r/it's.ts")), 0.0, 2.3, 4.0)]  # fmt: skip
    facts = {0: FileFacts(1.4, True, True, "aac"), 1: FileFacts(1.4, True, True, "aac")}
    text, trim = ffconcat(entries, facts, precise=False)
    assert text.splitlines() == ["ffconcat version 1.0", "file '/r/a.ts'", "inpoint 2.900000",
                                 "file '/r/it'\\''s.ts'", "outpoint 3.700000"]  # fmt: skip
    assert trim == 0.0
    text, trim = ffconcat(entries, facts, precise=True)  # decoded from the file's start
    assert "inpoint" not in text
    assert trim == 1.5
