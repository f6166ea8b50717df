"""Playback of a recording job by wall-clock time (issue 24): its spans and gaps, signed playback
URLs, the FFmpeg that makes one file of a range, and HLS VOD playlists. No FastAPI here; the
routes are in :mod:`reelhouse.api.playback.routes`, the pure timeline in
:mod:`reelhouse.api.playback.timeline`.

One file of a range (mp4, ts) is FFmpeg's concat demuxer over an ``ffconcat`` list the engine
writes: the files of the range in order, the first with an ``inpoint`` and the last with an
``outpoint`` (in the file's own timestamps, read with ffprobe), copied (cut at keyframes) or,
with ``precise``, decoded from a little before the start and trimmed exactly, then encoded.
Media runs on across a gap (the output holds the recorded media only); the gaps are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reelhouse.api.files import signing
from reelhouse.api.playback import timeline as tl
from reelhouse.api.playback.sources import Source, local_path, source_for
from reelhouse.api.state import AppState
from reelhouse.common.errors import Conflict, NotFound
from reelhouse.common.ffmpeg.probe import run_ffprobe
from reelhouse.common.mongo import Collections

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
"""The tools on PATH (the API has no path settings for them; it runs them only for playback)."""

EXTENSIONS = {"mp4": "mp4", "ts": "ts", "hls": "m3u8"}
"""A playback format's file extension in its URL."""

MEDIA_TYPES = {"mp4": "video/mp4", "ts": "video/mp2t", "hls": "application/vnd.apple.mpegurl"}

PLAYABLE_STATUSES = ("ready", "archived", "recording")
"""File statuses whose media playback reads (``recording``: closed parts of a running session
and m3u8 playlists, whose listed segments are complete)."""

EDGE_S = 0.05
"""An in or out point this close to a file's start or end is the file's start or end."""

PRECISE_LEAD_S = 10.0
"""A precise cut decodes from this long before its start (longer than any recorder GOP), so the
keyframe the decoder needs is read whatever the concat demuxer's seek lands on."""

REMOTE_PROTOCOLS = "file,http,https,tcp,tls,crypto"
"""What FFmpeg may open when a source is an object's presigned URL (the engine's own)."""

GAPS_HEADER = "X-Reelhouse-Gaps"
"""The gaps inside a served range: compact JSON, a list of ``{from, to, duration_ms, cause}``
(at most :data:`GAPS_IN_HEADER`; ``X-Reelhouse-Gaps-Count`` gives the full count)."""

GAPS_IN_HEADER = 20


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the job's timeline ---------------------------------------------------------------------------


def _pauses(job: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    """The job's last pause (the document keeps only that one), as a window."""
    paused, resumed = tl._aware(job.get("paused_at")), tl._aware(job.get("resumed_at"))
    if paused is None:
        return []
    if resumed is not None and resumed > paused:
        return [(paused, resumed)]
    if job.get("paused"):
        return [(paused, datetime.now(UTC))]
    return []


async def job_by_id(state: AppState, job_id: str, tenant: str | None) -> dict[str, Any]:
    """The recording job (of ``tenant`` when given; a signed URL is its own authority), or 404."""
    from bson import ObjectId

    query: dict[str, Any] = {"_id": ObjectId(job_id)}
    if tenant is not None:
        query["tenant"] = tenant
    job = await state.db[Collections.RECORDINGS].find_one(query)
    if job is None:
        raise NotFound(f"recording {job_id} not found", field="id")
    return job


async def job_timeline(
    state: AppState, job: dict[str, Any], *, start: datetime | None, end: datetime | None
) -> tl.Timeline:
    """The job's pieces of media in ``[start, end)`` with their spans and gaps."""
    cursor = state.db[Collections.FILES].find(
        {"entity_id": str(job["_id"]), "tenant": job["tenant"],
         "status": {"$in": list(PLAYABLE_STATUSES)}}
    )  # fmt: skip
    pieces: list[tl.Piece] = []
    async for record in cursor:
        if record.get("reprocess"):
            continue
        if str(record.get("file_path", "")).endswith(".m3u8"):
            playlist = local_path(state.settings, record.get("file_path"))
            if playlist is None:
                continue
            text = await asyncio.to_thread(playlist.read_text, errors="replace")
            pieces += tl.pieces_of_playlist(record, playlist, text)
        elif record["status"] != "recording" or record.get("part_ended_at") is not None:
            pieces += tl.pieces_of_file(record)
    return tl.build(pieces, start=start, end=end, pauses=_pauses(job))


# -- signed URLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """What a playback URL serves."""

    job_id: str
    format: str
    start_ms: int
    duration_ms: int
    precise: bool

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_ms / 1000, UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(milliseconds=self.duration_ms)

    def message(self) -> str:
        """What the URL's signature signs (not a file id: it cannot pass for a download's)."""
        return (f"playback:{self.job_id}:{self.format}:{self.start_ms}:{self.duration_ms}:"
                f"{int(self.precise)}")  # fmt: skip

    def url(self, secret: str, expires: int) -> str:
        signature = signing.sign(secret, self.message(), expires)
        return (f"/api/recording/playback/{self.job_id}.{EXTENSIONS[self.format]}"
                f"?start={self.start_ms}&duration={self.duration_ms}&precise={int(self.precise)}"
                f"&expires={expires}&signature={signature}")  # fmt: skip


def segment_message(file_id: str, index: int) -> str:
    return f"playback-segment:{file_id}:{index}"


def segment_url(secret: str, file_id: str, index: int, expires: int) -> str:
    signature = signing.sign(secret, segment_message(file_id, index), expires)
    return (f"/api/recording/playback/segment/{file_id}/{index}.ts"
            f"?expires={expires}&signature={signature}")  # fmt: skip


def gaps_headers(gaps: list[dict[str, Any]]) -> dict[str, str]:
    shown = json.dumps(gaps[:GAPS_IN_HEADER], separators=(",", ":"))
    return {GAPS_HEADER: shown, f"{GAPS_HEADER}-Count": str(len(gaps))}


def media_seconds(timeline: tl.Timeline) -> float:
    return round(sum(span["duration"] for span in timeline.spans), 3)


# -- one file of a range: the concat list and FFmpeg's arguments ----------------------------------


@dataclass
class Entry:
    """One file of the concat list and the media seconds of it to play."""

    key: tuple[str, int | None]
    source: Source
    in_s: float
    out_s: float
    length_s: float
    """The whole file's media duration (where the record says it)."""

    @property
    def whole_start(self) -> bool:
        return self.in_s <= EDGE_S

    @property
    def whole_end(self) -> bool:
        return self.length_s > 0 and self.out_s >= self.length_s - EDGE_S


async def concat_entries(
    state: AppState, timeline: tl.Timeline, start: datetime, end: datetime, *, expires_s: int
) -> list[Entry]:
    """The files of the range in play order, each with the media seconds of it to play (a run
    of one file's media that continues across pieces is one entry)."""
    entries: list[Entry] = []
    for piece in timeline.pieces:
        lo, hi = max(piece.start, start), min(piece.end, end)
        if hi <= lo:
            continue
        in_s = piece.offset_s + (lo - piece.start).total_seconds()
        out_s = in_s + (hi - lo).total_seconds()
        key = (str(piece.record["_id"]), piece.segment)
        if entries and entries[-1].key == key and abs(entries[-1].out_s - in_s) < EDGE_S:
            entries[-1].out_s = out_s
            continue
        if piece.segment is not None:
            length = piece.duration_s
            source = await source_for(state, piece.record, expires_s=expires_s,
                                      local_file=piece.segment_path)  # fmt: skip
        else:
            length = tl._ms(piece.record.get("duration_ms"))
            source = await source_for(state, piece.record, expires_s=expires_s)
        entries.append(Entry(key, source, in_s, out_s, length))
    return entries


@dataclass(frozen=True)
class FileFacts:
    start_time: float
    video: bool
    audio: bool
    audio_codec: str | None


async def file_facts(source: Source) -> FileFacts:
    """The first timestamp and the streams of one file (ffprobe; the engine's own path or URL)."""
    whitelist = REMOTE_PROTOCOLS if source.remote else "file"
    info = await run_ffprobe(
        ["-protocol_whitelist", whitelist,
         "-show_entries", "format=start_time:stream=codec_type,codec_name",
         source.for_ffmpeg()],
        timeout_s=10.0, ffprobe_path=FFPROBE,
    ) or {}  # fmt: skip
    streams = info.get("streams") or []
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    start = 0.0
    with contextlib.suppress(KeyError, TypeError, ValueError):
        start = float(info["format"]["start_time"])
    return FileFacts(
        start_time=start,
        video=any(s.get("codec_type") == "video" for s in streams),
        audio=audio is not None,
        audio_codec=(audio or {}).get("codec_name"),
    )


async def keyframe_before(source: Source, at: float) -> float | None:
    """The timestamp of the last video keyframe at or before ``at`` (the file's own time), read
    from packets (no decoding) in the ``PRECISE_LEAD_S`` before it; None if there is none."""
    whitelist = REMOTE_PROTOCOLS if source.remote else "file"
    info = await run_ffprobe(
        ["-protocol_whitelist", whitelist, "-select_streams", "v:0",
         "-read_intervals", f"{max(0.0, at - PRECISE_LEAD_S):.3f}%{at + EDGE_S:.3f}",
         "-show_entries", "packet=pts_time,flags", source.for_ffmpeg()],
        timeout_s=10.0, ffprobe_path=FFPROBE,
    ) or {}  # fmt: skip
    found = None
    for packet in info.get("packets") or ():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            pts = float(packet["pts_time"])
            if "K" in str(packet.get("flags", "")) and pts <= at + 0.001:
                found = pts if found is None else max(found, pts)
    return found


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def ffconcat(
    entries: list[Entry],
    facts: dict[int, FileFacts],
    *,
    precise: bool,
    first_keyframe: float | None = None,
) -> tuple[str, float]:
    """The list, and (precise) where the range starts in its timeline, seconds."""
    lines = ["ffconcat version 1.0"]
    trim_start = 0.0
    for index, entry in enumerate(entries):
        lines.append(f"file {_quoted(entry.source.for_ffmpeg())}")
        base = facts[index].start_time if index in facts else 0.0
        in_s = entry.in_s
        if precise and index == 0:
            lead = min(entry.in_s, PRECISE_LEAD_S)
            in_s = entry.in_s - lead
            trim_start = lead if in_s > EDGE_S else entry.in_s
        if in_s > EDGE_S:
            at = base + in_s
            if index == 0 and not precise and first_keyframe is not None:
                # Copied: start at the keyframe before the in point (the concat demuxer's seek
                # in MPEG-TS can land on the one after it and lose a GOP).
                at = first_keyframe
            lines.append(f"inpoint {at:.6f}")
        if not entry.whole_end:
            lines.append(f"outpoint {base + entry.out_s:.6f}")
    return "\n".join(lines) + "\n", trim_start


def output_args(fmt: str, first: FileFacts, *, precise: bool, trim_start: float,
                duration_s: float) -> list[str]:  # fmt: skip
    """Stream selection, codecs and the muxer of the served file (to ``pipe:1``)."""
    args: list[str] = []
    if precise:
        graph, maps = [], []
        if first.video:
            graph.append(f"[0:v:0]trim=start={trim_start:.6f}:duration={duration_s:.6f},"
                         "setpts=PTS-STARTPTS[v]")  # fmt: skip
            maps += ["-map", "[v]"]
        if first.audio:
            graph.append(f"[0:a:0]atrim=start={trim_start:.6f}:duration={duration_s:.6f},"
                         "asetpts=PTS-STARTPTS[a]")  # fmt: skip
            maps += ["-map", "[a]"]
        args += ["-filter_complex", ";".join(graph), *maps]
        if first.video:
            args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]
        if first.audio:
            args += ["-c:a", "aac", "-b:a", "128k"]
    else:
        args += ["-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy"]
        if fmt == "mp4" and first.audio_codec == "aac":
            args += ["-bsf:a", "aac_adtstoasc"]  # ADTS (MPEG-TS) to MP4's; others pass through
    if fmt == "mp4":
        args += ["-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof"]
    else:
        args += ["-f", "mpegts"]
    return [*args, "pipe:1"]


@dataclass
class Job:
    """What the route runs: FFmpeg's arguments and the list file it reads (removed after)."""

    args: list[str]
    listing: Path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.listing.unlink()


async def ffmpeg_job(state: AppState, timeline: tl.Timeline, rng: Range, *, expires_s: int) -> Job:
    """FFmpeg's arguments for one file of ``rng`` (the concat list written to a private file)."""
    entries = await concat_entries(state, timeline, rng.start, rng.end, expires_s=expires_s)
    if not entries:
        raise NotFound("no recorded media in this range", field="start")
    probe_at = sorted({0, *(i for i, e in enumerate(entries)
                            if not e.whole_start or not e.whole_end)})  # fmt: skip
    probed = await asyncio.gather(*(file_facts(entries[i].source) for i in probe_at))
    facts = dict(zip(probe_at, probed, strict=True))
    keyframe = None
    if not rng.precise and not entries[0].whole_start:
        keyframe = await keyframe_before(entries[0].source, facts[0].start_time + entries[0].in_s)
    listing_text, trim_start = ffconcat(
        entries, facts, precise=rng.precise, first_keyframe=keyframe
    )
    media_s = sum(e.out_s - e.in_s for e in entries)
    fd, name = tempfile.mkstemp(prefix="reelhouse-playback-", suffix=".ffconcat")
    with os.fdopen(fd, "w") as fh:
        fh.write(listing_text)
    remote = any(e.source.remote for e in entries)
    args = [
        "-protocol_whitelist", REMOTE_PROTOCOLS if remote else "file",
        "-f", "concat", "-safe", "0", "-i", name,
        *output_args(rng.format, facts[0], precise=rng.precise, trim_start=trim_start,
                     duration_s=media_s),
    ]  # fmt: skip
    return Job(args=args, listing=Path(name))


# -- HLS ------------------------------------------------------------------------------------------


def _continuous(job: dict[str, Any], prev: tl.Piece, nxt: tl.Piece) -> bool:
    """Whether ``nxt``'s timestamps continue ``prev``'s (no discontinuity needed)."""
    if not prev.run or prev.run != nxt.run:
        return False
    if nxt.segment is not None:
        return True  # one playlist's segments, no #EXT-X-DISCONTINUITY between them
    settings = job.get("recording_mode_settings") or {}
    # Split MPEG-TS keeps the stream's timestamps only when cut at clock times.
    return job.get("output_format") == "mpegts" and bool(settings.get("align_to_clock"))


async def hls_playlist(
    state: AppState, job: dict[str, Any], timeline: tl.Timeline, *, secret: str, expires: int
) -> str:
    """An HLS VOD playlist of the range's segments: a program date-time on every segment, a
    discontinuity at every gap (and wherever timestamps restart), signed segment URLs."""
    pieces = timeline.pieces
    if not pieces:
        raise NotFound("no recorded media in this range", field="start")
    if any(p.ext not in tl.SEGMENT_FORMATS for p in pieces):
        raise Conflict(
            "hls plays MPEG-TS segments (split mpegts or m3u8 recordings); ask for mp4 or ts",
            field="format",
        )
    expires_s = max(1, expires - int(datetime.now(UTC).timestamp()))
    target = max(1, math.ceil(max(p.duration_s for p in pieces)))
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]  # fmt: skip
    reach: datetime | None = None
    prev: tl.Piece | None = None
    for piece in pieces:
        if prev is not None and reach is not None:
            gap = (piece.start - reach).total_seconds() >= tl.GAP_MIN_S
            if gap or not _continuous(job, prev, piece):
                lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso(piece.start)}")
        lines.append(f"#EXTINF:{piece.duration_s:.3f},")
        file_id = str(piece.record["_id"])
        if piece.segment is not None:
            await source_for(state, piece.record, expires_s=expires_s,
                             local_file=piece.segment_path)  # fmt: skip
            lines.append(segment_url(secret, file_id, piece.segment, expires))
        else:
            source = await source_for(state, piece.record, expires_s=expires_s)
            lines.append(source.url or signing.download_url(secret, file_id, expires))
        reach = piece.end if reach is None else max(reach, piece.end)
        prev = piece
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
