"""Reading the ingest servers' contributions (docs/INGEST.md) from the live plane.

PLACEHOLDER of the inputs branch: the ingest branch owns this module; merged with it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from reelhouse.common.live import LivePlane, decode

__all__ = ["contribution", "contribution_name", "reader_url"]


def contribution_name(module_name: str, stream_id: str) -> str:
    """The contribution a publisher row names: SRT ``publisher/<name>`` → ``<name>``; RTMP: the
    path after the host."""
    if module_name == "MODULE_SRT_SERVERS":
        return stream_id.removeprefix("publisher/")
    return stream_id.strip("/")


async def contribution(live: LivePlane, server_id: str, name: str) -> dict[str, Any] | None:
    """The contribution's live-plane value while it has a publisher or is held, else None."""
    key = live.bus.subjects.live_ingest(server_id, name)
    return decode(await live.get(key))


def reader_url(value: dict[str, Any], server_id: str, name: str, *, timeout_s: float) -> str:
    """The fan-out reader URL of a live contribution (SRT caller)."""
    stream_id = quote(f"read/{server_id}/{name}", safe="/")
    return (
        f"srt://{value['fanout']}?mode=caller&transtype=live&streamid={stream_id}"
        f"&timeout={int(timeout_s * 1_000_000)}"
    )
