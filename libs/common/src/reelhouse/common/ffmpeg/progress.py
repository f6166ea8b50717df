"""Parser for FFmpeg's machine-readable progress (``-progress pipe:1 -nostats``).

FFmpeg writes one block of ``key=value`` lines about twice a second and ends each block with
``progress=continue`` (or ``progress=end`` for the last one)::

    frame=1532
    fps=25.00
    stream_0_0_q=20.0
    bitrate=1842.1kbits/s
    total_size=414832640
    out_time_us=61200000
    out_time_ms=61200000
    out_time=00:01:01.200000
    dup_frames=0
    drop_frames=0
    speed=1.00x
    progress=continue

:class:`ProgressParser` is fed one line at a time and returns a :class:`ProgressSnapshot` when a
block completes. It does no I/O, so it is tested against captured FFmpeg output
(``tests/fixtures/ffmpeg_progress_*.txt``).

Units worth knowing (FFmpeg 5.1):

- ``out_time_ms`` is, despite its name, in **microseconds** (the same number as
  ``out_time_us``). The API's getStat ``processData.out_time_ms`` carries FFmpeg's value verbatim
  (the seed shows ``"61200000"`` for about 61 s), so the snapshot keeps it as printed and offers
  :attr:`ProgressSnapshot.out_time_s` in seconds for internal use.
- ``bitrate`` is printed as ``%6.1fkbits/s`` (left-padded with spaces) or ``N/A``; values are
  stripped, and :attr:`ProgressSnapshot.bitrate_kbits` is the rounded integer (``0`` for ``N/A``).
- Audio-only outputs have no ``frame`` or ``fps`` keys; those fields are then ``None``.
- ``total_size`` and ``bitrate`` are measured on the *first output file's* own I/O context only.
  The ``tee`` muxer has none, so a restream with several destinations reads ``N/A`` for both;
  :meth:`ProgressSnapshot.with_total_size` fills them in from a byte count taken elsewhere (the
  supervisor's tap), the way FFmpeg computes them.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict

__all__ = ["NOT_AVAILABLE", "ProgressParser", "ProgressSnapshot", "parse_bitrate_kbits"]

NOT_AVAILABLE: Final = "N/A"
"""What FFmpeg prints for a value it does not know yet."""

_BITRATE = re.compile(r"^(?P<value>\d+(?:\.\d*)?)\s*(?P<prefix>[kMG]?)bits/s$")
_PREFIX_TO_KBITS: Final = {"": 0.001, "k": 1.0, "M": 1000.0, "G": 1_000_000.0}


def parse_bitrate_kbits(value: str) -> int:
    """FFmpeg's printed bitrate (``"1842.1kbits/s"``) as whole kbit/s, rounded; ``0`` if unknown."""
    match = _BITRATE.match(value.strip())
    if match is None:
        return 0
    return round(float(match["value"]) * _PREFIX_TO_KBITS[match["prefix"]])


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class ProgressSnapshot(BaseModel):
    """One completed progress block, shaped like the API's getStat ``processData`` fields.

    String fields carry FFmpeg's values as printed (whitespace stripped), ``"N/A"`` when FFmpeg
    printed ``N/A`` or left the key out. ``frame`` and ``fps`` are ``None`` when FFmpeg does not
    report them (audio-only outputs).
    """

    model_config = ConfigDict(frozen=True)

    frame: str | None = None
    fps: str | None = None
    bitrate: str = NOT_AVAILABLE
    bitrate_kbits: int = 0
    total_size: str = NOT_AVAILABLE
    out_time_ms: str = NOT_AVAILABLE  # FFmpeg's value verbatim: microseconds in FFmpeg 5.1
    speed: str = NOT_AVAILABLE
    progress: str  # "continue" or "end"
    drop_frames: int | None = None
    dup_frames: int | None = None

    @property
    def out_time_s(self) -> float | None:
        """Output time in seconds (``out_time_ms`` read as microseconds); ``None`` if unknown."""
        micros = _parse_int(self.out_time_ms)
        return None if micros is None else micros / 1_000_000

    def with_total_size(self, size: int) -> ProgressSnapshot:
        """This snapshot with ``total_size`` = ``size`` bytes and ``bitrate`` computed from it as
        FFmpeg does (``size * 8 / out_time``, printed ``%.1fkbits/s``; ``N/A`` before any output
        time)."""
        bitrate = NOT_AVAILABLE
        seconds = self.out_time_s
        if seconds is not None and seconds > 0:
            bitrate = f"{size * 8 / seconds / 1000:.1f}kbits/s"
        return self.model_copy(
            update={
                "total_size": str(size),
                "bitrate": bitrate,
                "bitrate_kbits": parse_bitrate_kbits(bitrate),
            }
        )

    @property
    def ended(self) -> bool:
        """True for FFmpeg's last block (``progress=end``)."""
        return self.progress == "end"


class ProgressParser:
    """Turns FFmpeg ``-progress`` output, fed line by line, into :class:`ProgressSnapshot` s.

    Blank lines, lines without ``=`` (a line cut short) and keys it does not know
    (``stream_0_0_q``, ``out_time``, ...) are ignored. A block that started before the first line
    fed yields a snapshot with whatever keys were seen.
    """

    def __init__(self) -> None:
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> ProgressSnapshot | None:
        """Feed one line (with or without its line ending); a snapshot when a block completes."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        key, value = key.strip(), value.strip()
        if key != "progress":
            self._block[key] = value
            return None
        block, self._block = self._block, {}
        return self._snapshot(block, value)

    @staticmethod
    def _snapshot(block: dict[str, str], progress: str) -> ProgressSnapshot:
        bitrate = block.get("bitrate", NOT_AVAILABLE)
        # Both keys carry microseconds in FFmpeg 5.1; prefer the one the API names.
        out_time = block.get("out_time_ms", block.get("out_time_us", NOT_AVAILABLE))
        return ProgressSnapshot(
            frame=block.get("frame"),
            fps=block.get("fps"),
            bitrate=bitrate,
            bitrate_kbits=parse_bitrate_kbits(bitrate),
            total_size=block.get("total_size", NOT_AVAILABLE),
            out_time_ms=out_time,
            speed=block.get("speed", NOT_AVAILABLE),
            progress=progress,
            drop_frames=_parse_int(block.get("drop_frames")),
            dup_frames=_parse_int(block.get("dup_frames")),
        )
