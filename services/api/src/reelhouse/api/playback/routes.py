"""``/api/recording/getPlayback``, ``getPlaybackUrl`` and the signed playback URLs they lead to.

- ``getPlayback`` (``id``, optional ``from``/``to``): the job's recorded media on the wall
  clock, as ``spans`` (``start``, ``end``, ``duration`` in seconds of media, ``files``) and
  ``gaps`` (``from``, ``to``, ``duration_ms``, ``cause``).
- ``getPlaybackUrl`` (``id``, ``start``, ``duration`` seconds, ``format`` mp4|ts|hls, optional
  ``precise``): ``{url, expires}`` plus what the range holds (``media_duration``, ``gaps``).
- ``GET /api/recording/playback/<job_id>.<mp4|ts|m3u8>?start=<unix ms>&duration=<ms>
  &precise=0|1&expires=<unix>&signature=<hex>``: the signature (the download URLs' HMAC, over
  the job, format, range and precision) is the only authority, as for downloads. mp4 and ts are
  one file made by FFmpeg while it is sent; m3u8 is an HLS VOD playlist whose segment URLs are
  signed the same way (``/api/recording/playback/segment/<file_id>/<n>.ts`` for an m3u8
  recording's segments, the download URL for a split segment's file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from bson import ObjectId
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.files import signing
from reelhouse.api.playback import service
from reelhouse.api.playback.schemas import PlaybackQuery, PlaybackUrlBody
from reelhouse.api.playback.sources import local_path
from reelhouse.common.errors import (
    Forbidden,
    InternalError,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from reelhouse.common.ffmpeg.pipe import PipedFFmpeg
from reelhouse.common.files import hls_entries, slugify
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections

router = APIRouter(prefix="/api/recording", tags=["recording playback"])
log = get_logger("reelhouse.api.playback")

FIRST_BYTES_WAIT_S = 20.0
"""How long a playback answer waits for FFmpeg's first bytes before it gives up (500)."""

FORMATS_BY_EXTENSION = {ext: fmt for fmt, ext in service.EXTENSIONS.items()}

BAD_LINK = "the playback link is invalid or has expired; ask getPlaybackUrl for a new one"


@router.post("/getPlayback", summary="A recording's media on the wall clock: spans and gaps")
async def get_playback(state: State, principal: Principal, body: PlaybackQuery) -> dict[str, Any]:
    job = await service.job_by_id(state, body.id, tenant_of(principal))
    timeline = await service.job_timeline(state, job, start=body.from_, end=body.to)
    return {
        "id": body.id,
        "from": service.iso(body.from_) if body.from_ else None,
        "to": service.iso(body.to) if body.to else None,
        "media_duration": service.media_seconds(timeline),
        "spans": timeline.spans,
        "gaps": timeline.gaps,
    }


@router.post(
    "/getPlaybackUrl",
    summary="A signed, expiring URL that plays a wall-clock range as one file or an HLS playlist",
    responses=documented(
        409,
        s409="CONFLICT: hls asked of files that are not MPEG-TS, or a file of the range is "
        "neither on disk nor in object storage",
    ),
)
async def get_playback_url(
    request: Request, state: State, principal: Principal, body: PlaybackUrlBody
) -> dict[str, Any]:
    cap = state.settings.playback_max_range_s
    if body.duration > cap:
        raise ValidationFailed(f"duration: at most {cap} seconds", field="duration")
    if body.precise and body.format == "hls":
        raise ValidationFailed(
            "precise: an HLS playlist lists whole segments; ask mp4 or ts for an exact cut",
            field="precise",
        )
    job = await service.job_by_id(state, body.id, tenant_of(principal))
    rng = service.Range(
        job_id=body.id,
        format=body.format,
        start_ms=round(body.start.timestamp() * 1000),
        duration_ms=max(1, round(body.duration * 1000)),
        precise=body.precise,
    )
    timeline = await service.job_timeline(state, job, start=rng.start, end=rng.end)
    if not timeline.pieces:
        raise NotFound(
            f"recording {body.id} has no media between {service.iso(rng.start)} and "
            f"{service.iso(rng.end)}; getPlayback lists what it has",
            field="start",
        )
    ttl = state.settings.download_url_ttl_s
    expires = int(time.time()) + ttl
    secret: str = request.app.state.download_secret
    # Refused now rather than when played: hls of files that are not MPEG-TS, a missing file.
    if body.format == "hls":
        await service.hls_playlist(state, job, timeline, secret=secret, expires=expires)
    else:
        await service.concat_entries(state, timeline, rng.start, rng.end, expires_s=ttl)
    return {
        "url": rng.url(secret, expires),
        "expires": service.iso(datetime.fromtimestamp(expires, UTC)),
        "format": body.format,
        "start": service.iso(rng.start),
        "duration": rng.duration_ms / 1000,
        "media_duration": service.media_seconds(timeline),
        "gaps": timeline.gaps,
    }


def _range_of(
    name: str,
    start: str | None,
    duration: str | None,
    precise: str | None,
    expires: str | None,
    signature: str | None,
    secret: str,
) -> service.Range:
    job_id, _, ext = name.partition(".")
    fmt = FORMATS_BY_EXTENSION.get(ext)
    numbers = (start or "", duration or "")
    if (fmt is None or not ObjectId.is_valid(job_id) or len(job_id) != 24
            or not all(n.isdigit() and len(n) <= 15 for n in numbers)
            or precise not in ("0", "1")):  # fmt: skip
        raise Forbidden(BAD_LINK, field="signature")
    rng = service.Range(job_id=job_id, format=fmt, start_ms=int(numbers[0]),
                        duration_ms=int(numbers[1]), precise=precise == "1")  # fmt: skip
    if not signing.signature_valid(secret, rng.message(), expires, signature):
        raise Forbidden(BAD_LINK, field="signature")
    return rng


class _Slots:
    """Playback FFmpegs running in this API replica (REELHOUSE_PLAYBACK_MAX_STREAMS)."""

    def __init__(self) -> None:
        self.running = 0


def _slots(request: Request) -> _Slots:
    slots = getattr(request.app.state, "playback_slots", None)
    if slots is None:
        slots = request.app.state.playback_slots = _Slots()
    return slots


_MEDIA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The range as one file (mp4 fragmented, or MPEG-TS), made while it is "
        "sent, or an HLS VOD playlist. `X-Reelhouse-Gaps` lists the gaps inside the range.",
        "content": {t: {} for t in sorted(service.MEDIA_TYPES.values())},
    },
    **documented(403, 404, 409, s403="FORBIDDEN: the link is invalid or expired"),
}


@router.get(
    "/playback/{name}",
    summary="Play a signed range of a recording (signed URL, no token)",
    response_class=Response,
    responses=_MEDIA_RESPONSES,
)
async def playback(
    request: Request,
    state: State,
    name: Annotated[str, PathParam(max_length=40, description="<job id>.<mp4|ts|m3u8>")],
    start: Annotated[str | None, Query(max_length=15, description="Unix time, ms.")] = None,
    duration: Annotated[str | None, Query(max_length=15, description="Milliseconds.")] = None,
    precise: Annotated[str | None, Query(max_length=1, description="1: exact cut.")] = None,
    expires: Annotated[str | None, Query(max_length=12, description="Unix time.")] = None,
    signature: Annotated[str | None, Query(max_length=64, description="HMAC-SHA256, hex.")] = None,
) -> Response:
    secret: str = request.app.state.download_secret
    rng = _range_of(name, start, duration, precise, expires, signature, secret)
    job = await service.job_by_id(state, rng.job_id, None)
    timeline = await service.job_timeline(state, job, start=rng.start, end=rng.end)
    if not timeline.pieces:
        raise NotFound("no recorded media in this range any more", field="start")
    headers = {**service.gaps_headers(timeline.gaps),
               "X-Reelhouse-Media-Duration": f"{service.media_seconds(timeline):.3f}"}  # fmt: skip
    if rng.format == "hls":
        assert expires is not None
        text = await service.hls_playlist(state, job, timeline, secret=secret, expires=int(expires))
        return Response(text, media_type=service.MEDIA_TYPES["hls"],
                        headers={"Cache-Control": "no-cache", **headers})  # fmt: skip
    slots = _slots(request)
    if slots.running >= state.settings.playback_max_streams:
        raise Unavailable("too many playback files are being made; try again shortly",
                          headers={"Retry-After": "2"})  # fmt: skip
    slots.running += 1
    try:
        return await _stream(state, job, timeline, rng, headers, slots)
    except BaseException:
        slots.running -= 1
        raise


async def _stream(state: Any, job: dict[str, Any], timeline: Any, rng: service.Range,
                  headers: dict[str, str], slots: _Slots) -> Response:  # fmt: skip
    """Start FFmpeg, wait for its first bytes (so a failure is still an error answer), then
    send the rest as it comes; FFmpeg is killed when the client goes away."""
    made = await service.ffmpeg_job(state, timeline, rng,
                                     expires_s=state.settings.download_url_ttl_s)  # fmt: skip
    ffmpeg = PipedFFmpeg(service.FFMPEG, made.args)
    started = time.monotonic()
    try:
        await ffmpeg.start()
        first = await asyncio.wait_for(ffmpeg.read(), FIRST_BYTES_WAIT_S)
    except BaseException:
        await ffmpeg.close()
        made.discard()
        raise
    if not first:
        code = await ffmpeg.wait()
        made.discard()
        log.error("playback_failed", job_id=rng.job_id, code=code, error=list(ffmpeg.stderr_tail))
        raise InternalError("FFmpeg could not make the file of this range")
    log.info("playback_started", job_id=rng.job_id, format=rng.format, precise=rng.precise,
             first_byte_s=round(time.monotonic() - started, 3))  # fmt: skip

    async def body() -> AsyncIterator[bytes]:
        sent = len(first)
        drained = False  # FFmpeg's output read to its end (not a client gone half-way)
        try:
            yield first
            async for chunk in ffmpeg.chunks():
                sent += len(chunk)
                yield chunk
            drained = (await ffmpeg.wait()) == 0
        finally:
            await ffmpeg.close()
            made.discard()
            slots.running -= 1
            log.info("playback_ended", job_id=rng.job_id, bytes=sent, completed=drained)
            if not drained and ffmpeg.returncode not in (None, 0, -9):
                log.warning("playback_ffmpeg_failed", job_id=rng.job_id,
                            error=list(ffmpeg.stderr_tail))  # fmt: skip

    name = f"{slugify(str(job.get('recording_name', 'recording')))}-" + rng.start.strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    ext = service.EXTENSIONS[rng.format]
    return StreamingResponse(
        body(),
        media_type=service.MEDIA_TYPES[rng.format],
        headers={"Content-Disposition": f'inline; filename="{name}.{ext}"',
                 "Cache-Control": "no-store", **headers},
    )  # fmt: skip


@router.get(
    "/playback/segment/{file_id}/{segment}",
    summary="One segment of an m3u8 recording, for a playback playlist (signed URL, no token)",
    response_class=FileResponse,
    responses={
        200: {"description": "The MPEG-TS segment.", "content": {"video/mp2t": {}}},
        **documented(403, 404, s403="FORBIDDEN: the link is invalid or expired"),
    },
)
async def playback_segment(
    request: Request,
    state: State,
    file_id: Annotated[str, PathParam(max_length=24)],
    segment: Annotated[str, PathParam(max_length=16, description="<n>.ts")],
    expires: Annotated[str | None, Query(max_length=12, description="Unix time.")] = None,
    signature: Annotated[str | None, Query(max_length=64, description="HMAC-SHA256, hex.")] = None,
) -> Response:
    secret: str = request.app.state.download_secret
    index_text = segment.removesuffix(".ts")
    if (not ObjectId.is_valid(file_id) or len(file_id) != 24 or not index_text.isdigit()
            or len(index_text) > 9):  # fmt: skip
        raise Forbidden(BAD_LINK, field="signature")
    index = int(index_text)
    message = service.segment_message(file_id, index)
    if not signing.signature_valid(secret, message, expires, signature):
        raise Forbidden(BAD_LINK, field="signature")
    record = await state.db[Collections.FILES].find_one({"_id": ObjectId(file_id)})
    playlist = local_path(state.settings, (record or {}).get("file_path"))
    if record is None or record.get("status") == "deleted" or playlist is None:
        raise NotFound(f"file {file_id} is no longer available", field="file_id")
    entries = await asyncio.to_thread(hls_entries, playlist)
    path: Path | None = entries[index][0] if index < len(entries) else None
    if path is None or local_path(state.settings, path) is None:
        raise NotFound(f"segment {index} of file {file_id} is no longer available", field="segment")
    return FileResponse(path, media_type="video/mp2t")
