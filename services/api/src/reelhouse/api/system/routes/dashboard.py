"""The operator dashboard: one page at ``/``, its ES modules under ``/dashboard/``, and the media
routes a page needs that plain API calls cannot give it. The dashboard fetches both with its
access token in a header (a thumbnail as a blob, hls.js through ``xhrSetup``); they also take
``?token=``, like the restream HLS route, for players that cannot send headers.

* ``GET /api/recording/thumbnail?id=`` -- the live JPEG the recorder keeps in the job folder
  (a second FFmpeg output, :data:`THUMBNAIL_FILE_NAME`), newest picture, never cached.
* ``GET /api/recording/play/{file_id}/{name}`` -- an m3u8 recording for hls.js: the playlist
  (segment names carry the token on) and the segments it lists; nothing else in the folder.

The page itself is static (no build step, no CDN): see ``static/`` and docs/DECISIONS.md
"Dashboard".
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from bson import ObjectId
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import PlayerPrincipal, State
from reelhouse.api.jobs import service as jobs
from reelhouse.api.recordings.service import KIND
from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.errors import NotFound
from reelhouse.common.ffmpeg.recording_args import THUMBNAIL_FILE_NAME
from reelhouse.common.files import hls_segments, is_under, job_dir
from reelhouse.common.mongo import Collections

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
"""The page and its modules (shipped inside the package)."""

_ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_NO_STORE = {"Cache-Control": "no-store"}
_HLS_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=_ASSET_TYPES[".html"])


@router.get("/dashboard/{asset:path}", include_in_schema=False)
async def asset(asset: str) -> FileResponse:
    path = (STATIC_DIR / asset).resolve()
    media_type = _ASSET_TYPES.get(path.suffix.lower())
    if (
        not _ASSET_NAME.match(asset)
        or ".." in asset.split("/")
        or not path.is_relative_to(STATIC_DIR)
        or media_type is None
        or not path.is_file()
    ):
        raise NotFound(f"no dashboard file {asset}", field="asset")
    # Modules change with the package: always revalidate (they are small and local).
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get(
    "/api/recording/thumbnail",
    summary="The live thumbnail of a recording job (JPEG; header token or ?token=)",
    response_class=FileResponse,
    responses={200: {"description": "The newest picture.", "content": {"image/jpeg": {}}}},
)
async def thumbnail(
    state: State,
    principal: PlayerPrincipal,
    job_id: Annotated[ObjectIdStr, Query(alias="id", description="The recording job.")],
) -> Response:
    await jobs.load(state.db, KIND, tenant_of(principal), job_id)
    path = job_dir(state.settings.storage_root, job_id) / THUMBNAIL_FILE_NAME
    if not path.is_file():
        raise NotFound(
            f"recording {job_id} has no thumbnail yet (one is written every few seconds while "
            "it runs with video)",
            field="id",
        )
    return FileResponse(path, media_type="image/jpeg", headers=_NO_STORE)


def _hls_file(playlist: Path, name: str) -> Path | None:
    """The playlist itself or a segment it lists, by name; None for anything else."""
    playlist = playlist.resolve()
    if name == playlist.name:
        path: Path | None = playlist
    else:
        path = next((s for s in hls_segments(playlist) if s.name == name), None)
    if path is None or path.suffix not in _HLS_TYPES or not path.is_file():
        return None
    return path


def _playlist_with_token(text: str, token: str) -> str:
    query = "?token=" + quote(token, safe="")
    lines = []
    for line in text.splitlines():
        bare = line.strip()
        if bare and not bare.startswith("#") and "/" not in bare and ".." not in bare:
            line = bare + query
        lines.append(line)
    return "\n".join(lines) + "\n"


@router.get(
    "/api/recording/play/{file_id}/{name}",
    summary="An m3u8 recording for players: its playlist and the segments it lists",
    response_class=Response,
    responses={
        200: {
            "description": "The playlist or a segment.",
            "content": {t: {} for t in sorted(set(_HLS_TYPES.values()))},
        }
    },
)
async def play_hls(
    request: Request,
    state: State,
    principal: PlayerPrincipal,
    file_id: Annotated[ObjectIdStr, PathParam()],
    name: Annotated[str, PathParam(max_length=255)],
) -> Response:
    record = await state.db[Collections.FILES].find_one(
        {"_id": ObjectId(file_id), "tenant": tenant_of(principal)}
    )
    if record is None or record.get("status") == "deleted":
        raise NotFound(f"file {file_id} not found", field="file_id")
    playlist = Path(record.get("file_path", ""))
    if playlist.suffix != ".m3u8" or not is_under(state.settings.storage_root, playlist):
        raise NotFound(f"file {file_id} is not an m3u8 recording", field="file_id")
    path = await asyncio.to_thread(_hls_file, playlist, name)
    if path is None:
        raise NotFound(f"no file {name} in this recording", field="name")
    if path.suffix == ".ts":
        return FileResponse(path, media_type=_HLS_TYPES[".ts"])
    text = await asyncio.to_thread(path.read_text, errors="replace")
    token = request.query_params.get("token")
    if token and not request.headers.get("x-access-token"):
        text = _playlist_with_token(text, token)
    return Response(text, media_type=_HLS_TYPES[".m3u8"], headers={"Cache-Control": "no-cache"})
