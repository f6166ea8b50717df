"""Disk watermarks of the storage root (docs/DECISIONS.md "Disk watermarks").

:func:`disk_state` reads the filesystem that holds the storage root and says where it stands
against the two watermarks every service shares (``disk_warning_pct``, ``disk_critical_pct``):

- ``warning``: the janitor publishes a ``disk_warning`` event (once per level change);
- ``critical``: the API refuses to activate recordings (507 ``INSUFFICIENT_STORAGE``) and the
  recorders stop claiming jobs until the disk is below the level again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DiskLevel", "DiskState", "disk_state"]

DiskLevel = Literal["ok", "warning", "critical"]


@dataclass(frozen=True)
class DiskState:
    """Usage of the filesystem that holds the storage root, and its watermark level."""

    total: int
    used: int
    free: int
    used_pct: float
    level: DiskLevel
    warning_pct: float
    critical_pct: float

    def describe(self) -> str:
        """One line for an error message or a log: used %, free bytes and the levels."""
        return (
            f"storage is {self.used_pct:.1f}% full ({self.free} bytes free); "
            f"warning level {self.warning_pct:g}%, critical level {self.critical_pct:g}%"
        )


def disk_state(
    root: Path | str, *, warning_pct: float, critical_pct: float, min_free_bytes: int = 0
) -> DiskState:
    """Where the filesystem of ``root`` (created if missing) stands against the watermarks.

    ``critical`` when the used share reaches ``critical_pct`` or fewer than ``min_free_bytes``
    are free; ``warning`` when it reaches ``warning_pct``; ``ok`` otherwise.
    """
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(path)
    used_pct = 100.0 * usage.used / usage.total if usage.total else 100.0
    level: DiskLevel
    if used_pct >= critical_pct or (min_free_bytes and usage.free < min_free_bytes):
        level = "critical"
    elif used_pct >= warning_pct:
        level = "warning"
    else:
        level = "ok"
    return DiskState(
        total=usage.total,
        used=usage.used,
        free=usage.free,
        used_pct=used_pct,
        level=level,
        warning_pct=warning_pct,
        critical_pct=critical_pct,
    )
