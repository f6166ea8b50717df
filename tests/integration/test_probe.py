"""A node's probe length (``REELHOUSE_PROBE_MS`` / runtime ``probe_ms``).

A short probe starts a recording sooner, but only when a keyframe (H.264's SPS) arrives within
it. A source joined mid-GOP whose next keyframe is later than the probe makes FFmpeg say "Could
not find codec parameters" (and the mp4 muxer give up): that costs one attempt, the run retries
at once with the full 2 s probe and records normally. Real recorder, FFmpeg, nats-server and
FerretDB; the mid-GOP source is an SRT listener sending a transport stream that starts one
second before its first keyframe.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.events import Events
from support.media import FFMPEG, SrtSource, _ffmpeg_argv, ffmpeg_children
from support.stack import Stack, running_stack
from support.wait import eventually
from test_recording_jobs import job, job_body, probe, recorder_ready, stop_and_wait, wait_recorded

SHORT_PROBE_MS = 300


@pytest.fixture
async def stack(service_env, tmp_path):
    async with running_stack(service_env, tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def mid_gop_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s of 640x360/25 with a keyframe every 2 s, cut to start 1 s before the second one."""
    work = tmp_path_factory.mktemp("midgop")
    full, cut = work / "full.ts", work / "mid.ts"
    encode = [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-t", "8", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-c:a", "aac",
        "-f", "mpegts", str(full),
    ]  # fmt: skip
    subprocess.run(encode, check=True, timeout=60)
    # Output-side -ss with -copyinkf keeps the P-frames before the next keyframe.
    trim = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(full), "-ss", "1",
            "-map", "0", "-c", "copy", "-copyinkf", "-f", "mpegts", str(cut)]  # fmt: skip
    subprocess.run(trim, check=True, timeout=60)
    first = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-read_intervals", "%+#1",
         "-show_entries", "packet=flags", "-of", "csv=p=0", str(cut)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert first, "the cut has no video packets"
    assert "K" not in first[0], "the cut must start on a non-keyframe"
    return cut


class MidGopSrtSource(SrtSource):
    """An SRT listener looping ``ts`` as it is: every caller joins one second before a keyframe."""

    def __init__(self, ts: Path, **kw: Any) -> None:
        self.ts = ts
        super().__init__(**kw)

    def _argv(self) -> list[str]:
        return _ffmpeg_argv(
            "-re", "-stream_loop", "-1", "-i", str(self.ts),
            "-map", "0", "-c", "copy", "-copyinkf",
            "-f", "mpegts", f"{self.url}?mode=listener",
        )  # fmt: skip


def ffmpeg_args(recorder_pid: int, url: str) -> list[str]:
    """The arguments of the recorder's FFmpeg reading ``url`` ([] if there is none)."""
    for pid, _ in ffmpeg_children(recorder_pid):
        try:
            args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue  # gone meanwhile
        if any(a.startswith(url) for a in args) and "-analyzeduration" in args:
            return args
    return []


def analyzeduration_of(recorder_pid: int, url: str) -> int | None:
    """``-analyzeduration`` of the recorder's FFmpeg reading ``url`` (None: no such process)."""
    args = ffmpeg_args(recorder_pid, url)
    return int(args[args.index("-analyzeduration") + 1]) if args else None


async def test_short_probe_starts_keyframe_first_sources_and_falls_back_for_mid_gop_ones(
    stack: Stack, db, srt_source: SrtSource, mid_gop_ts: Path
) -> None:
    # A node tuned for density and fast starts: short probe, no dashboard thumbnails.
    recorder = await stack.start_recorder(
        REELHOUSE_PROBE_MS=str(SHORT_PROBE_MS), REELHOUSE_THUMBNAILS="false"
    )
    await recorder_ready(stack, db)
    async with MidGopSrtSource(mid_gop_ts) as mid_gop:
        async with Events(
            stack.env["REELHOUSE_NATS_URL"], stack.env["REELHOUSE_SUBJECT_PREFIX"]
        ) as ev:
            # The fixture's source starts every caller on a keyframe; the other one never does.
            fast_id = (await stack.ok("create", job_body(srt_source.url, 0)))["id"]
            slow_body = job_body(mid_gop.url, 0, recording_name="mid-gop")
            slow_id = (await stack.ok("create", slow_body))["id"]

            async def running(job_id: str) -> dict[str, Any] | None:
                rt = (await job(stack, job_id))["runtime"] or {}
                return rt if rt.get("state") == "running" else None

            fast = await eventually(lambda: running(fast_id), timeout=20, what="fast job running")
            slow = await eventually(lambda: running(slow_id), timeout=30, what="mid-GOP running")
            # The node's short probe as set, on the source that allows it, with no retry ...
            assert analyzeduration_of(recorder.pid, srt_source.url) == SHORT_PROBE_MS * 1000
            assert fast["restarts"] == 0
            # ... and the full one after FFmpeg found no keyframe in the short probe.
            assert analyzeduration_of(recorder.pid, mid_gop.url) == 2_000_000
            assert slow["restarts"] >= 1
            args = ffmpeg_args(recorder.pid, srt_source.url)
            assert "image2" not in args  # no thumbnail output ...
            assert "-skip_frame:v" not in args  # ... and so no decoding at all
            assert mid_gop.launches >= 2  # the short attempt connected, then the retry
            await wait_recorded(stack, slow_id, 3.0)
            await wait_recorded(stack, fast_id, 3.0)
            # The failed attempt was retried at once, quietly: nothing for the operator to chase.
            assert not {"job_failed", "job_retrying"} & set(ev.types(slow_id))
        for job_id in (fast_id, slow_id):
            await stop_and_wait(stack, job_id)

            async def filed(job_id: str = job_id) -> list[dict[str, Any]] | None:
                files = (await job(stack, job_id))["recordedFiles"]
                return files if files and all(f["status"] == "ready" for f in files) else None

            files = await eventually(filed, timeout=30, what="the recording filed")
            assert len(files) == 1, files  # the short attempt left no file behind
            assert not list((stack.storage_root / job_id).glob(".thumb-*"))
            info = await probe(files[0]["file_path"])
            kinds = {(s["codec_type"], s.get("width")) for s in info["streams"]}
            assert kinds == {("video", 640), ("audio", None)}
