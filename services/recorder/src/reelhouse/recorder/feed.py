"""Streamlink as the reader of a recording's source (``IO_APPLICATION_STREAMLINK``: channels).

Each FFmpeg (re)start resolves the source afresh and opens the chosen stream: a platform's
playlist URL carries a token that expires (a day on Twitch), so a broadcast longer than that
goes on in the same recording as a new part after the old URL fails. Streamlink's reader
refreshes the playlist and fetches the segments; the supervisor copies what it reads into a
pipe FFmpeg reads (``pipe:<fd>``), never FFmpeg's stdin, which carries the ``q`` of a graceful
stop. Streamlink's HTTP goes through the run's filtering proxy (the address policy).
"""

from __future__ import annotations

from typing import Any

from reelhouse.common.ffmpeg.supervisor import Feed


class NotLive(RuntimeError):
    """The source has no stream now (offline, or streamlink cannot read it)."""


def open_stream(
    url: str,
    *,
    quality: str = "best",
    proxy_url: str | None = None,
    timeout_s: float = 10.0,
    options: dict[str, Any] | None = None,
    plugin_options: dict[str, Any] | None = None,
) -> Feed:
    """Resolve ``url`` with streamlink and open its ``quality`` stream (blocking: a thread).

    A URL no plugin knows is read as HLS (``hls://``). ``options`` are more session options
    and ``plugin_options`` the plugin's (a platform's credentials). Raises :class:`NotLive`
    when there is nothing to read.
    """
    from streamlink import Streamlink
    from streamlink.exceptions import NoPluginError, PluginError, StreamError

    session = Streamlink(
        options={
            "http-timeout": timeout_s,
            "hls-timeout": max(timeout_s, 10.0),
            "hls-live-edge": 3,
            **({"http-proxy": proxy_url} if proxy_url else {}),
            **(options or {}),
        }
    )
    try:
        try:
            _name, plugin_class, resolved = session.resolve_url(url)
        except NoPluginError:
            _name, plugin_class, resolved = session.resolve_url(f"hls://{url}")
        streams = plugin_class(session, resolved, dict(plugin_options or {})).streams()
    except PluginError as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else repr(exc)
        raise NotLive(f"streamlink: {text}") from None
    if not streams:
        raise NotLive("streamlink found no stream (offline)")
    chosen = next((streams[q] for q in quality.split(",") if q in streams), None)
    chosen = chosen or streams.get("best") or next(iter(streams.values()))
    try:
        return chosen.open()
    except StreamError as exc:
        raise NotLive(f"streamlink could not open the stream: {exc}") from None
