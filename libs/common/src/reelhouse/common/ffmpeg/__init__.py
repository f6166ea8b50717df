"""FFmpeg, run and watched: progress parser and process supervisor (docs/ARCHITECTURE.md §4)."""

from reelhouse.common.ffmpeg.progress import ProgressParser, ProgressSnapshot, parse_bitrate_kbits
from reelhouse.common.ffmpeg.supervisor import (
    FFmpegSupervisor,
    SupervisorConfig,
    SupervisorState,
    backoff_delay,
    build_argv,
)

__all__ = [
    "FFmpegSupervisor",
    "ProgressParser",
    "ProgressSnapshot",
    "SupervisorConfig",
    "SupervisorState",
    "backoff_delay",
    "build_argv",
    "parse_bitrate_kbits",
]
