"""pytest fixtures for live FFmpeg test media (see ``support.media``).

Register with ``pytest_plugins = ["support.media_fixtures"]``. Every fixture is function
scoped, returns STARTED objects and stops (and reaps) them at teardown. When a test fails, the
stderr tails of the ffmpeg processes it used are attached to its report.

Media parameters: the ready-made sources use the ``media_spec`` fixture (640x360 @ 25 fps);
override it for one test with ``@pytest.mark.parametrize("media_spec",
[MediaSpec.of("1920x1080")])``, or use ``media_source_factory(kind, size=..., fps=...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from support.media import (
    HlsSource,
    LiveReceiver,
    LiveSource,
    MediaSpec,
    ReceiverKind,
    RtmpReceiver,
    RtmpSource,
    SourceKind,
    SrtReceiver,
    SrtSource,
    UdpSource,
    make_receiver,
    make_source,
)

_Owned = LiveSource | LiveReceiver
_OWNED = pytest.StashKey[list[_Owned]]()


def _own(request: pytest.FixtureRequest, obj: _Owned) -> _Owned:
    request.node.stash.setdefault(_OWNED, []).append(obj)
    return obj


async def _stop_all(objs: list[_Owned]) -> None:
    results = await asyncio.gather(*(o.stop() for o in objs), return_exceptions=True)
    for obj, res in zip(objs, results, strict=True):
        if isinstance(res, BaseException):
            raise RuntimeError(f"failed to stop {obj!r}") from res


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach each live source's ffmpeg stderr tail to the report."""
    report = yield
    owned = item.stash.get(_OWNED, [])
    if report.failed and owned:
        for obj in owned:
            tail = obj.stderr_tail or "(no stderr)"
            title = f"media {obj.name} ({report.when})"
            body = f"{obj!r}\nexit codes: {obj.exit_codes}\n{tail}"
            report.sections.append((title, body))
    return report


class SourceFactory(Protocol):
    def __call__(
        self,
        kind: SourceKind = "srt",
        *,
        size: str = "640x360",
        fps: int = 25,
        video_bitrate: str | None = None,
        spec: MediaSpec | None = None,
        port: int | None = None,
        keep_serving: bool | None = None,
        start: bool = True,
        **kw: Any,
    ) -> Awaitable[LiveSource]: ...


class ReceiverFactory(Protocol):
    def __call__(
        self,
        kind: ReceiverKind = "rtmp",
        *,
        output: Path | str | None = None,
        port: int | None = None,
        keep_serving: bool = False,
        start: bool = True,
        **kw: Any,
    ) -> Awaitable[LiveReceiver]: ...


@pytest.fixture
def media_spec() -> MediaSpec:
    """Media of the ready-made sources; parametrize this name to change it for a test."""
    return MediaSpec()


@pytest.fixture
async def media_source_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SourceFactory]:
    """``await media_source_factory("srt"|"rtmp"|"udp"|"hls", size="1920x1080", fps=30, ...)``.

    ``keep_serving=None`` uses the kind's default (on for srt/rtmp). ``start=False`` returns an
    unstarted source (its port is already chosen). Extra keywords go to the source class.
    """
    created: list[_Owned] = []

    async def make(
        kind: SourceKind = "srt",
        *,
        size: str = "640x360",
        fps: int = 25,
        video_bitrate: str | None = None,
        spec: MediaSpec | None = None,
        port: int | None = None,
        keep_serving: bool | None = None,
        start: bool = True,
        **kw: Any,
    ) -> LiveSource:
        spec = spec or MediaSpec.of(size, fps, video_bitrate)
        if keep_serving is not None:
            kw["keep_serving"] = keep_serving
        if kind == "hls":
            kw.setdefault("workdir", tmp_path / f"hls-{len(created)}")
        source = make_source(kind, spec, port=port, **kw)
        created.append(_own(request, source))
        if start:
            await source.start()
        return source

    yield make
    await _stop_all(created)


@pytest.fixture
async def media_receiver_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ReceiverFactory]:
    """``await media_receiver_factory("rtmp"|"srt", output=..., keep_serving=False)``.

    Output defaults to ``tmp_path/<kind>-received-<n>.ts``. Extra keywords (``app``, ``key``
    for rtmp) go to the receiver class.
    """
    created: list[_Owned] = []

    async def make(
        kind: ReceiverKind = "rtmp",
        *,
        output: Path | str | None = None,
        port: int | None = None,
        keep_serving: bool = False,
        start: bool = True,
        **kw: Any,
    ) -> LiveReceiver:
        output = output or tmp_path / f"{kind}-received-{len(created)}.ts"
        receiver = make_receiver(kind, output, port=port, keep_serving=keep_serving, **kw)
        created.append(_own(request, receiver))
        if start:
            await receiver.start()
        return receiver

    yield make
    await _stop_all(created)


@pytest.fixture
async def srt_source(media_source_factory: SourceFactory, media_spec: MediaSpec) -> LiveSource:
    """Started SRT listener, keep-serving; clients call ``srt_source.url``."""
    source = await media_source_factory("srt", spec=media_spec)
    assert isinstance(source, SrtSource)
    return source


@pytest.fixture
async def rtmp_source(media_source_factory: SourceFactory, media_spec: MediaSpec) -> LiveSource:
    """Started RTMP server to pull from, keep-serving: ``rtmp://127.0.0.1:<port>/live/stream``."""
    source = await media_source_factory("rtmp", spec=media_spec)
    assert isinstance(source, RtmpSource)
    return source


@pytest.fixture
async def udp_source_factory(
    media_source_factory: SourceFactory, media_spec: MediaSpec
) -> Callable[..., Awaitable[LiveSource]]:
    """``await udp_source_factory(port, spec=None, host="127.0.0.1")``: push MPEG-TS to port."""

    async def make(
        port: int | None = None, *, spec: MediaSpec | None = None, host: str = "127.0.0.1"
    ) -> LiveSource:
        return await media_source_factory("udp", spec=spec or media_spec, port=port, host=host)

    return make


@pytest.fixture
async def udp_source(udp_source_factory: Callable[..., Awaitable[LiveSource]]) -> LiveSource:
    """Started UDP MPEG-TS push to a free port: listen on ``udp_source.url``."""
    source = await udp_source_factory()
    assert isinstance(source, UdpSource)
    return source


@pytest.fixture
async def hls_source(media_source_factory: SourceFactory, media_spec: MediaSpec) -> LiveSource:
    """Started live HLS over HTTP: ``http://127.0.0.1:<port>/live.m3u8`` (>= 2 segments)."""
    source = await media_source_factory("hls", spec=media_spec)
    assert isinstance(source, HlsSource)
    return source


@pytest.fixture
async def rtmp_receiver(media_receiver_factory: ReceiverFactory) -> LiveReceiver:
    """Started RTMP publish target ``rtmp://127.0.0.1:<port>/live/key`` recording to a .ts."""
    receiver = await media_receiver_factory("rtmp")
    assert isinstance(receiver, RtmpReceiver)
    return receiver


@pytest.fixture
async def srt_receiver(media_receiver_factory: ReceiverFactory) -> LiveReceiver:
    """Started SRT listener ``srt://127.0.0.1:<port>`` recording what is published to a .ts."""
    receiver = await media_receiver_factory("srt")
    assert isinstance(receiver, SrtReceiver)
    return receiver
