"""Recorded files: names, paths under the storage root, safe deletion (docs/ARCHITECTURE.md §5).

Layout: ``<storage_root>/<job_id>/<name-slug>-YYYY-MM-DD_HH-MM-SS.<ext>`` (UTC). Paths derive from
ids and timestamps; the user's name only contributes a slug. Every path is resolved and checked to
be under the storage root before anything reads or deletes it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

from reelhouse.common.contracts.base import format_timestamp
from reelhouse.common.errors import ValidationFailed

FILE_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
"""The timestamp in file names (strftime), e.g. ``2026-03-24_12-00-00``."""

MODULE_RECORDINGS = "MODULE_RECORDINGS"
FILE_VISIBILITY_PUBLIC = "FILE_VISIBILITY_PUBLIC"

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str, *, max_length: int = 60) -> str:
    """``"Main program archive"`` → ``"main-program-archive"``; ``"recording"`` if empty."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_name.lower()).strip("-")[:max_length].strip("-")
    return slug or "recording"


def job_dir(root: Path, job_id: str) -> Path:
    """The folder of one job's files (not created)."""
    if not re.fullmatch(r"[0-9a-f]{24}", job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return root.resolve() / job_id


def restream_hls_dir(root: Path, job_id: str) -> Path:
    """Where a restream's OUTPUT_TYPE_HLS destination is written (``index.m3u8`` + segments)."""
    if not re.fullmatch(r"[0-9a-f]{24}", job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return root.resolve() / "restreams" / job_id / "hls"


def file_name(slug: str, when: datetime, ext: str) -> str:
    """``<slug>-YYYY-MM-DD_HH-MM-SS.<ext>``."""
    return f"{slug}-{when.strftime(FILE_TIME_FORMAT)}.{ext}"


def is_under(root: Path, path: Path | str) -> bool:
    """True when ``path`` resolves to somewhere strictly inside ``root``."""
    resolved_root = root.resolve()
    resolved = Path(path).resolve()
    return resolved != resolved_root and resolved.is_relative_to(resolved_root)


def checked_path(root: Path, path: Path | str) -> Path:
    """``path`` resolved, or ValidationFailed if it is outside the storage root."""
    if not is_under(root, path):
        raise ValidationFailed("file path is outside the storage root", field="file_path")
    return Path(path).resolve()


def hls_entries(playlist: Path) -> list[tuple[Path, float]]:
    """Segment files a local HLS playlist lists (plain names next to it only), each with its
    ``#EXTINF`` duration in seconds (0 when missing)."""
    entries = []
    duration = 0.0
    with contextlib.suppress(OSError):
        for line in playlist.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("#EXTINF:"):
                with contextlib.suppress(ValueError):
                    duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
            elif line and not line.startswith("#"):
                if "/" not in line and ".." not in line:
                    entries.append((playlist.parent / line, duration))
                duration = 0.0
    return entries


def hls_segments(playlist: Path) -> list[Path]:
    """Segment files a local HLS playlist lists (plain names next to it only)."""
    return [path for path, _ in hls_entries(playlist)]


def delete_file_record_from_disk(
    root: Path, record: dict[str, Any], *, archive_root: Path | None = None
) -> int:
    """Delete a file record's file (and an HLS playlist's segments); returns files removed.

    The file must be under ``root``, or under ``archive_root`` when given (archived files).
    """
    if archive_root is not None and is_under(archive_root, record["file_path"]):
        root = archive_root
    path = checked_path(root, record["file_path"])
    targets = [path]
    if path.suffix == ".m3u8":
        targets += [s for s in hls_segments(path) if is_under(root, s)]
    removed = 0
    for target in targets:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            removed += 1
    return removed


def delete_job_dir(root: Path, job_id: str) -> None:
    """Remove a job's folder and everything left in it."""
    folder = job_dir(root, job_id)
    if is_under(root, folder):
        shutil.rmtree(folder, ignore_errors=True)


UPLOAD_BACKLOG = "upload_backlog"
"""Top-level field of a file record whose upload is pending, running or failed: its storage
target's id (unset once uploaded). Indexed (ferretdb-lite's ``indexed`` list, ``ensure_indexes``):
the uploader finds its work and ``/metrics`` counts the backlog by top-level equality on it."""


def upload_queued(storage_id: Any, now: datetime) -> dict[str, Any]:
    """The fields that queue a file for upload to ``storage_id`` (issue 24): ``upload.state:
    pending`` and the indexed ``upload_backlog``; nothing when the job names no target.

    Every writer that makes a file record ``ready`` puts these into the same ``$set`` (or the
    inserted record) when the record has no ``upload`` block yet: the recorder's close of a
    segment, its join of a seamless session (and the parts made ready when a join fails), a
    reprocess, and the janitor's uploader for a record that came without them (an older writer,
    a job given a target later). So the uploader finds its work by the index, never by reading
    every file of every job.
    """
    if not storage_id:
        return {}
    sid = str(storage_id)
    return {"upload": {"state": "pending", "storage_id": sid, "queued_at": now, "attempts": 0},
            UPLOAD_BACKLOG: sid}  # fmt: skip


_FILE_HIDDEN = frozenset(
    {"_id", "tenant", "node", "part", "modified", "hls_from", "status_before", "reprocess_node",
     "reprocess_until", "upload_backlog"}
)  # fmt: skip


def present_file(doc: dict[str, Any]) -> dict[str, Any]:
    """A file record as the API and events show it (``_id`` and ``id``, seed timestamps)."""
    out: dict[str, Any] = {"_id": str(doc["_id"]), "id": str(doc["_id"])}
    for key, value in doc.items():
        if key not in _FILE_HIDDEN:
            out[key] = format_timestamp(value) if isinstance(value, datetime) else value
    return out
