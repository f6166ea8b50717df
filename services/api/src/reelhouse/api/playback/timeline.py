"""A recording job's media on the wall clock: pieces, spans and gaps (pure functions, no I/O but
reading an HLS playlist).

Every file record the job has that holds finished media is cut into *pieces*: runs of media that
play without a break, each with its wall-clock start, its media duration, and where it lies in
its file. From the file records and their integrity data (docs/DECISIONS.md, "Seamless
sessions"):

- a split segment or an unjoined file: one piece, from its integrity period (it ends when the file
  was last written and began its media duration earlier); a publisher gap inside it (an ingest
  input held through a drop, ``source_gaps``) cuts it in two;
- a joined session file: one piece per integrity period, one after the other in the file (the
  seconds a handover overlap removed are left out);
- a closed part of a session still running (``recording``, ``part_ended_at``): one piece;
- an m3u8 recording: one piece per listed segment, from its ``#EXT-X-PROGRAM-DATE-TIME``.

Pieces closer than :data:`GAP_MIN_S` form one *span*; the time between two spans is a *gap*,
with its cause where the records say it: ``pause``, ``publisher_gap``, ``failover`` (the next
media came from another node) or ``interruption`` (source drop, FFmpeg restart).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GAP_MIN_S = 1.0
"""Time without media from which two pieces are separate spans (the recorder's integrity report
uses the same second)."""

SEGMENT_FORMATS = frozenset({".ts"})
"""Files an HLS playlist can list as they are."""


@dataclass
class Piece:
    """A run of media that plays without a break."""

    record: dict[str, Any]
    start: datetime
    """Wall clock of its first media."""
    duration_s: float
    offset_s: float = 0.0
    """Where it begins in its file, media seconds."""
    segment: int | None = None
    """An m3u8 recording's segment (its index in the playlist); None: the record's own file."""
    segment_path: Path | None = None
    run: tuple[Any, ...] = ()
    """Pieces with the same run continue each other's timestamps (HLS needs no discontinuity)."""
    gap_cause: str | None = None
    """Why media stopped before this piece, where the record itself says so."""

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)

    @property
    def ext(self) -> str:
        path = self.segment_path or Path(self.record.get("file_path", ""))
        return path.suffix.lower()


@dataclass
class Timeline:
    pieces: list[Piece]
    spans: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _ms(value: Any) -> float:
    try:
        return max(0.0, float(value or 0) / 1000)
    except (TypeError, ValueError):
        return 0.0


def _split_by_held_gaps(base: Piece, held: list[dict[str, Any]]) -> list[Piece]:
    """A piece whose wall span holds publisher gaps: its media before, between and after them."""
    pieces: list[Piece] = []
    cursor_wall, cursor_media, remaining = base.start, base.offset_s, base.duration_s
    for gap in sorted(held, key=lambda g: g["from"]):
        began, ended = _aware(gap.get("from")), _aware(gap.get("to"))
        if began is None or ended is None or began <= cursor_wall:
            continue
        before = min(remaining, (began - cursor_wall).total_seconds())
        pieces.append(
            Piece(
                base.record,
                cursor_wall,
                before,
                cursor_media,
                run=base.run,
                gap_cause=base.gap_cause if not pieces else "publisher_gap",
            )
        )
        cursor_media += before
        remaining -= before
        cursor_wall = ended
    pieces.append(
        Piece(
            base.record,
            cursor_wall,
            remaining,
            cursor_media,
            run=base.run,
            gap_cause="publisher_gap" if pieces else base.gap_cause,
        )
    )
    return [p for p in pieces if p.duration_s > 0]


def pieces_of_file(record: dict[str, Any]) -> list[Piece]:
    """The pieces of one file record (an m3u8 recording: see :func:`pieces_of_playlist`)."""
    integrity = record.get("integrity") or {}
    run = (str(record["_id"]),)
    periods = integrity.get("periods") or []
    if len(periods) > 1 and not integrity.get("join_failed"):  # a joined session file
        removed = {o.get("after_part"): _ms(o.get("duration_ms"))
                   for o in integrity.get("overlaps") or ()}  # fmt: skip
        causes = {g.get("after_part"): g.get("cause") for g in integrity.get("gaps") or ()}
        held = {g.get("in_part"): [] for g in integrity.get("gaps") or ()}
        for g in integrity.get("gaps") or ():
            if g.get("cause") == "publisher_gap":
                held.setdefault(g.get("in_part"), []).append(g)
        pieces: list[Piece] = []
        offset = 0.0
        for index, period in enumerate(periods):
            began, ended = _aware(period.get("from")), _aware(period.get("to"))
            if began is None or ended is None:
                continue
            skip = removed.get(index, 0.0)
            media = _ms(period.get("duration_ms")) or (ended - began).total_seconds()
            media = max(0.0, media - skip)
            held_s = sum(_ms(g.get("duration_ms")) for g in held.get(index + 1, ()))
            start = ended - timedelta(seconds=media + held_s)
            base = Piece(record, start, media, offset, run=run, gap_cause=causes.get(index))
            pieces += _split_by_held_gaps(base, held.get(index + 1, []))
            offset += media
        return pieces
    duration = _ms(record.get("duration_ms"))
    if duration <= 0:
        return []
    held = list(record.get("source_gaps") or ())
    if periods:
        ended = _aware(periods[-1].get("to"))
    else:  # a closed part of a running session
        ended = _aware(record.get("part_ended_at")) or _aware(record.get("closed_at"))
    if ended is None:
        return []
    held_s = sum(_ms(g.get("duration_ms")) for g in held)
    start = ended - timedelta(seconds=duration + held_s)
    # One FFmpeg run (a part) writes segments whose timestamps may continue each other.
    run = (record.get("node"), record.get("part"))
    base = Piece(record, start, duration, 0.0, run=run)
    return _split_by_held_gaps(base, held) if held else [base]


_PDT = "#EXT-X-PROGRAM-DATE-TIME:"


def _parse_pdt(text: str) -> datetime | None:
    text = text.strip()
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)  # FFmpeg writes +0000
    with contextlib.suppress(ValueError):
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    return None


def pieces_of_playlist(record: dict[str, Any], playlist: Path, text: str) -> list[Piece]:
    """One piece per segment an m3u8 recording lists (plain names next to it only), at its
    program date-time (or where the segment before it ended)."""
    pieces: list[Piece] = []
    when: datetime | None = None
    duration = 0.0
    run = 0
    index = 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_PDT):
            when = _parse_pdt(line[len(_PDT) :])
        elif line.startswith("#EXT-X-DISCONTINUITY"):
            run += 1
        elif line.startswith("#EXTINF:"):
            with contextlib.suppress(ValueError):
                duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#"):
            if "/" not in line and ".." not in line and when is not None and duration > 0:
                pieces.append(Piece(record, when, duration, 0.0, segment=index,
                                    segment_path=playlist.parent / line,
                                    run=(str(record["_id"]), run)))  # fmt: skip
            index += 1
            when = when + timedelta(seconds=duration) if when is not None else None
            duration = 0.0
    return pieces


def _cause(prev: Piece, nxt: Piece, pauses: list[tuple[datetime, datetime]]) -> str:
    if nxt.gap_cause:
        return nxt.gap_cause
    if prev.record.get("ended_by") == "pause" and prev.record is not nxt.record:
        return "pause"
    gap_from, gap_to = prev.end, nxt.start
    if any(p_from < gap_to and gap_from < p_to for p_from, p_to in pauses):
        return "pause"
    prev_node, next_node = prev.record.get("node"), nxt.record.get("node")
    if prev_node and next_node and prev_node != next_node:
        return "failover"
    return "interruption"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(
    pieces: list[Piece],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    pauses: list[tuple[datetime, datetime]] | None = None,
) -> Timeline:
    """The pieces that overlap ``[start, end)`` in wall-clock order, with the spans they form and
    the gaps between them (a gap is reported only between two pieces of the range)."""
    ordered = sorted(pieces, key=lambda p: (p.start, p.offset_s))
    chosen = [
        p for p in ordered if (start is None or p.end > start) and (end is None or p.start < end)
    ]
    timeline = Timeline(pieces=chosen)
    pauses = pauses or []
    span: dict[str, Any] | None = None
    span_end: datetime | None = None
    prev: Piece | None = None
    for piece in chosen:
        lo = max(piece.start, start) if start is not None else piece.start
        hi = min(piece.end, end) if end is not None else piece.end
        if prev is not None and span_end is not None:
            away = (piece.start - span_end).total_seconds()
            if away >= GAP_MIN_S:
                timeline.gaps.append({"from": _iso(span_end), "to": _iso(piece.start),
                                      "duration_ms": int(away * 1000),
                                      "cause": _cause(prev, piece, pauses)})  # fmt: skip
                span = None
        if span is None:
            span = {"_start": lo, "_end": hi, "_media": 0.0, "files": []}
            timeline.spans.append(span)
            span_end = piece.end
        span["_end"] = max(span["_end"], hi)
        span["_media"] += max(0.0, (hi - lo).total_seconds())
        file_id = str(piece.record["_id"])
        if file_id not in span["files"]:
            span["files"].append(file_id)
        span_end = max(span_end, piece.end) if span_end is not None else piece.end
        prev = piece
    for s in timeline.spans:
        s["start"] = _iso(s.pop("_start"))
        s["end"] = _iso(s.pop("_end"))
        s["duration"] = round(s.pop("_media"), 3)
    return timeline
