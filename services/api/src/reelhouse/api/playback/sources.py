"""Where a piece of playback reads its media: the local file when it is there, else the object
the storage half uploaded it to (a presigned URL). One function, :func:`source_for`, decides.

For a record whose ``upload.state`` is ``uploaded`` and whose local copy is gone,
:func:`presigned_object_url` asks the storage-targets service for a presigned GET of the object
(:func:`reelhouse.api.storage_targets.service.presigned_url`, the one ``getDownloadUrl`` uses).
FFmpeg then reads the object over HTTP(S) with Range requests (the concat list names the URL and
the protocol whitelist admits ``http,https,tcp,tls,crypto``), and HLS playlists list the URL
as it is. The URL is one the engine built from its own storage target, never a user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelhouse.api.settings import ApiSettings
from reelhouse.api.state import AppState
from reelhouse.api.storage_targets import service as storage_targets
from reelhouse.common.errors import Conflict, NotFound
from reelhouse.common.files import is_under


@dataclass(frozen=True)
class Source:
    """A readable source of one file: a local path, or a URL the engine built (never a user's)."""

    path: Path | None = None
    url: str | None = None

    @property
    def remote(self) -> bool:
        return self.url is not None

    def for_ffmpeg(self) -> str:
        return str(self.path) if self.path is not None else str(self.url)


def local_path(settings: ApiSettings, file_path: str | Path | None) -> Path | None:
    """The file, resolved, when it exists under the storage or the archive root; else None."""
    if not file_path:
        return None
    for root in (settings.storage_root, settings.archive_root):
        if is_under(root, file_path):
            path = Path(file_path).resolve()
            return path if path.is_file() else None
    return None


async def presigned_object_url(
    state: AppState, record: dict[str, Any], *, expires_s: int
) -> str | None:
    """A presigned GET of the record's uploaded object, or None when it has none (not uploaded,
    or its storage target is gone)."""
    if not storage_targets.uploaded(record):
        return None
    try:
        url, _ = await storage_targets.presigned_url(state, record, expires_s=expires_s)
    except NotFound:
        return None
    return url


async def source_for(
    state: AppState,
    record: dict[str, Any],
    *,
    expires_s: int,
    local_file: str | Path | None = None,
) -> Source:
    """The readable source of a file record (or of ``local_file``, an m3u8 recording's segment):
    the local copy when it exists, else the uploaded object's presigned URL; 409 naming ``id``
    when neither is there."""
    path = local_path(state.settings, local_file or record.get("file_path"))
    if path is not None:
        return Source(path=path)
    if local_file is None:
        url = await presigned_object_url(state, record, expires_s=expires_s)
        if url:
            return Source(url=url)
    raise Conflict(
        f"file {record['_id']} ({record.get('file_name')}) is neither on this engine's disk nor "
        "in object storage",
        field="id",
    )
