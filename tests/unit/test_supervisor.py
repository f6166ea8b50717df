"""The FFmpeg supervisor: pure helpers, the state machine against a fake FFmpeg, and real FFmpeg.

The fake (``tests/fakes/fake_ffmpeg.py``) stands in where a test must control FFmpeg's
misbehaviour: crashing after K progress blocks, hanging, ignoring ``q`` and SIGINT. Real FFmpeg
shows that a worker killed with SIGKILL takes its FFmpeg along (PR_SET_PDEATHSIG) and leaves a
playable file. Waits poll for conditions; their timeouts only bound a failing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.infra import wait_until
from support.wait import eventually

from reelhouse.common.ffmpeg.progress import ProgressSnapshot
from reelhouse.common.ffmpeg.supervisor import (
    TRANSITIONS,
    FFmpegSupervisor,
    IllegalTransition,
    SupervisorConfig,
    SupervisorState,
    backoff_delay,
    build_argv,
)

ROOT = Path(__file__).resolve().parents[2]
FAKE_FFMPEG = ROOT / "tests/fakes/fake_ffmpeg.py"
# Seconds: how long a wait may take before the test fails (never how long a test takes).
WAIT_S = 20.0

S = SupervisorState
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")


# -- helpers ---------------------------------------------------------------------------------


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def fake_ffmpeg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-binary ``ffmpeg_path`` that execs the fake with this interpreter (same pid)."""
    python, fake = shlex.quote(sys.executable), shlex.quote(str(FAKE_FFMPEG))
    path = tmp_path_factory.mktemp("bin") / "ffmpeg"
    return _executable(path, f'#!/bin/sh\nexec {python} {fake} "$@"\n')


class Commands:
    """An argv factory: the n-th start gets ``runs[n]``, later starts the last one."""

    def __init__(self, *runs: Sequence[str]) -> None:
        self.runs = runs
        self.calls = 0

    def __call__(self) -> list[str]:
        run = self.runs[min(self.calls, len(self.runs) - 1)]
        self.calls += 1
        return list(run)


class Events:
    """What the hooks saw, with the event loop's time of every state change."""

    def __init__(self) -> None:
        self.supervisor: FFmpegSupervisor | None = None
        self.states: list[SupervisorState] = []
        self.reasons: list[str] = []
        self.state_times: list[float] = []
        self.progress: list[ProgressSnapshot] = []
        self.progress_times: list[float] = []
        self.exits: list[tuple[int, list[str]]] = []
        self.running_pids: list[int | None] = []

    async def on_state(self, state: SupervisorState, reason: str) -> None:
        self.states.append(state)
        self.reasons.append(reason)
        self.state_times.append(asyncio.get_running_loop().time())
        if state is S.RUNNING and self.supervisor is not None:
            self.running_pids.append(self.supervisor.pid)

    async def on_progress(self, snapshot: ProgressSnapshot) -> None:
        self.progress.append(snapshot)
        self.progress_times.append(asyncio.get_running_loop().time())

    async def on_exit(self, code: int, tail: list[str]) -> None:
        self.exits.append((code, tail))

    def reason_of(self, state: SupervisorState) -> str:
        return self.reasons[self.states.index(state)]


Supervise = Callable[..., tuple[FFmpegSupervisor, Events]]


@pytest.fixture
async def supervise(fake_ffmpeg: str) -> AsyncIterator[Supervise]:
    """Build started supervisors over the fake; whatever a test leaves running is stopped."""
    made: list[FFmpegSupervisor] = []

    def make(
        commands: Commands, *, env: Mapping[str, str] | None = None, **config: Any
    ) -> tuple[FFmpegSupervisor, Events]:
        settings: dict[str, Any] = {
            "ffmpeg_path": fake_ffmpeg,
            "stale_timeout_s": None,  # only the watchdog test wants it: a busy CI box is slow
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            "sigint_after_s": 0.2,
            "graceful_stop_timeout_s": 5.0,
        }
        events = Events()
        supervisor = FFmpegSupervisor(
            commands,
            config=SupervisorConfig(**(settings | config)),
            on_state=events.on_state,
            on_progress=events.on_progress,
            on_exit=events.on_exit,
            env=env,
            rng=random.Random(7),
        )
        events.supervisor = supervisor
        made.append(supervisor)
        supervisor.start()
        return supervisor, events

    yield make
    for supervisor in made:
        await asyncio.wait_for(supervisor.stop("test teardown"), WAIT_S)


async def wait_for_state(supervisor: FFmpegSupervisor, state: SupervisorState) -> None:
    await eventually(lambda: supervisor.state is state, timeout=WAIT_S, what=f"state {state}")


def reaped(pid: int) -> bool:
    """True once ``pid`` (our child) has exited and been waited for: no zombie left behind."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (any more): it was reaped
        return not Path(f"/proc/{pid}").exists()
    return False  # alive, or a zombie left unreaped (which this call has just reaped)


# -- build_argv ------------------------------------------------------------------------------


def test_build_argv_puts_progress_options_after_the_binary() -> None:
    args = ["-i", "srt://src:9000", "-c", "copy", "out.ts"]
    assert build_argv("/usr/bin/ffmpeg", args) == [
        "/usr/bin/ffmpeg",
        "-progress",
        "pipe:1",
        "-nostats",
        *args,
    ]
    assert build_argv("ffmpeg", tuple(args))[4:] == args  # any sequence, returned as a list


@pytest.mark.parametrize(
    "args",
    [
        ["-progress", "pipe:1", "-nostats", "-i", "in", "out"],
        ["-i", "in", "-nostats", "-progress", "pipe:1", "out"],
        ["-nostats", "-i", "in", "out"],
        ["-progress", "pipe:1", "-i", "in", "out"],
    ],
)
def test_build_argv_adds_progress_options_only_once(args: list[str]) -> None:
    argv = build_argv("ffmpeg", args)
    assert argv[0] == "ffmpeg"
    assert argv.count("-progress") == 1
    assert argv[argv.index("-progress") + 1] == "pipe:1"
    assert argv.count("-nostats") == 1
    assert argv[-3:] == args[-3:]


@pytest.mark.parametrize("args", ["-i in.ts out.mp4", b"-i in.ts out.mp4", ["-t", 5], [None]])
def test_build_argv_takes_a_list_of_strings_only(args: Any) -> None:
    with pytest.raises(TypeError):
        build_argv("ffmpeg", args)


def test_build_argv_refuses_nul_and_converts_paths() -> None:
    with pytest.raises(ValueError, match="NUL"):
        build_argv("ffmpeg", ["-i", "rtmp://host/app\0key"])
    assert build_argv("ffmpeg", ["-y", Path("/data/out.mp4")])[-1] == "/data/out.mp4"


@pytest.mark.parametrize(
    "args",
    [
        ["-progress", "/tmp/progress.txt", "-i", "in", "out"],
        ["-progress", "pipe:2", "-i", "in", "out"],
        ["-i", "in", "out", "-progress"],
        ["-progress", "pipe:1", "-i", "in", "-progress", "file:p.txt", "out"],
    ],
)
def test_build_argv_refuses_progress_aimed_elsewhere(args: list[str]) -> None:
    with pytest.raises(ValueError, match="pipe:1"):
        build_argv("ffmpeg", args)


# -- backoff_delay ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    config = SupervisorConfig(
        backoff_initial_s=0.5, backoff_multiplier=3, backoff_max_s=20, jitter=0
    )
    delays = [backoff_delay(n, config, rand=0.9) for n in range(1, 7)]
    assert delays == pytest.approx([0.5, 1.5, 4.5, 13.5, 20, 20])
    assert backoff_delay(100_000, config, rand=0.9) == 20  # float overflow is capped too


@pytest.mark.parametrize("failures", [1, 2, 3, 8, 50])
def test_backoff_jitter_stays_within_bounds(failures: int) -> None:
    config = SupervisorConfig(backoff_initial_s=1, backoff_max_s=30, jitter=0.5)
    base = min(30.0, 2.0 ** (failures - 1))
    rng = random.Random(failures)
    delays = [backoff_delay(failures, config, rng.random()) for _ in range(200)]
    assert all(base * 0.5 <= d <= base for d in delays)
    assert backoff_delay(failures, config, rand=0.0) == pytest.approx(base)
    assert backoff_delay(failures, config, rand=0.999999) == pytest.approx(base * 0.5, rel=1e-5)


def test_backoff_jitter_is_really_applied() -> None:
    config = SupervisorConfig(backoff_initial_s=2, backoff_max_s=30, jitter=0.8)
    delays = {backoff_delay(3, config, rand) for rand in (0.0, 0.1, 0.5, 0.9)}
    assert len(delays) == 4
    assert min(delays) == pytest.approx(8 * (1 - 0.8 * 0.9))
    unjittered = SupervisorConfig(backoff_initial_s=2, backoff_max_s=30, jitter=0)
    assert {backoff_delay(3, unjittered, rand) for rand in (0.0, 0.5, 0.9)} == {8.0}


# -- the state machine over the fake ---------------------------------------------------------


async def test_healthy_run_goes_running_reports_progress_and_stops_finished(
    supervise: Supervise,
) -> None:
    supervisor, events = supervise(Commands(["--fake-interval", "0.05"]))
    await wait_for_state(supervisor, S.RUNNING)
    pid = supervisor.pid
    assert pid is not None
    assert events.running_pids == [pid]
    assert Path(f"/proc/{pid}").exists()
    assert supervisor.started_at is not None
    await eventually(lambda: len(events.progress) >= 3, timeout=WAIT_S, what="3 progress blocks")
    frames = [int(s.frame or 0) for s in events.progress[:3]]
    assert frames == sorted(frames)
    assert frames[0] < frames[-1]
    assert all(s.progress == "continue" for s in events.progress[:3])

    assert await supervisor.stop("operator") == S.FINISHED
    assert events.states == [S.STARTING, S.RUNNING, S.STOPPING, S.FINISHED]
    assert events.reasons[-1] == "operator"
    assert [code for code, _ in events.exits] == [0]  # 'q' was enough
    assert events.progress[-1].ended  # the fake's final block after 'q' was still read
    assert supervisor.last_progress == events.progress[-1]
    assert supervisor.pid is None
    assert reaped(pid)
    assert supervisor.last_error is None
    assert supervisor.restarts == 0
    assert await supervisor.stop() == S.FINISHED  # idempotent
    with pytest.raises(RuntimeError):
        supervisor.start()


async def test_crash_is_retried_with_a_new_argv_and_keeps_last_error(
    supervise: Supervise,
) -> None:
    crash = [
        "--fake-blocks", "2", "--fake-exit", "1",
        "--fake-stderr", "Input #0, mpegts, from 'srt://src:9000':",
        "--fake-final-stderr", "srt://src:9000: Connection reset by peer",
    ]  # fmt: skip
    commands = Commands(crash, ["--fake-interval", "0.05"])
    supervisor, events = supervise(commands)
    await eventually(
        lambda: supervisor.restarts == 1 and supervisor.state is S.RUNNING,
        timeout=WAIT_S,
        what="the restarted process to run",
    )
    assert commands.calls == 2
    assert events.states == [S.STARTING, S.RUNNING, S.RETRYING, S.STARTING, S.RUNNING]
    retry_reason = events.reason_of(S.RETRYING)
    assert retry_reason.startswith("exited with code 1: srt://src:9000: Connection reset by peer")
    assert "restarting in" in retry_reason
    assert events.exits[0][0] == 1
    assert supervisor.last_error is not None
    assert supervisor.last_error.splitlines() == [
        "Input #0, mpegts, from 'srt://src:9000':",
        "srt://src:9000: Connection reset by peer",
    ]
    first, second = events.running_pids
    assert first != second
    assert reaped(first)
    assert supervisor.pid == second
    assert supervisor.stderr_tail == []  # the current run has said nothing yet

    assert await supervisor.stop() == S.FINISHED
    assert supervisor.last_error.endswith("Connection reset by peer")  # kept after a clean run


async def test_gives_up_as_failed_after_max_restarts(supervise: Supervise) -> None:
    commands = Commands(
        ["--fake-blocks", "0", "--fake-exit", "3", "--fake-final-stderr", "HTTP error 404"]
    )
    supervisor, events = supervise(commands, max_restarts=2)
    assert await asyncio.wait_for(supervisor.wait(), WAIT_S) == S.FAILED
    assert commands.calls == 3
    assert supervisor.restarts == 2
    assert events.states == [S.STARTING, S.RETRYING, S.STARTING, S.RETRYING, S.STARTING, S.FAILED]
    assert supervisor.reason == "gave up after 2 restarts: exited with code 3: HTTP error 404"
    assert supervisor.last_error == "HTTP error 404"
    assert [code for code, _ in events.exits] == [3, 3, 3]
    assert await supervisor.stop() == S.FAILED  # stop() after the end just reports


@pytest.mark.parametrize(
    "hang",
    [
        pytest.param(["--fake-blocks", "2"], id="hangs-after-2-blocks"),
        pytest.param(["--fake-blocks", "0"], id="never-reports"),
    ],
)
async def test_watchdog_restarts_ffmpeg_without_progress(
    supervise: Supervise, hang: list[str]
) -> None:
    commands = Commands(hang)
    # finish_on_success: the hung fake exits 0 on 'q', and that must still count as a failure.
    # Time enough for 'q' even if the fake is slow to start on a busy machine (no SIGINT).
    supervisor, events = supervise(
        commands,
        stale_timeout_s=0.5,
        finish_on_success=True,
        sigint_after_s=10,
        graceful_stop_timeout_s=15,
    )
    await eventually(lambda: commands.calls >= 2, timeout=WAIT_S, what="a restart")
    retry_at = events.state_times[events.states.index(S.RETRYING)]
    assert events.reason_of(S.RETRYING).startswith("no progress for 0.5 s")
    assert events.exits[0][0] == 0  # it quit on 'q': stopped by the watchdog, not crashed
    # The fake answers 'q' with a final progress=end block that repeats the last position.
    blocks = zip(events.progress, events.progress_times, strict=True)
    moved_at = [at for snapshot, at in blocks if not snapshot.ended and at < retry_at]
    if moved_at:  # hung after some blocks: the watchdog counts from the last one that moved
        assert retry_at - max(moved_at) >= 0.5 - 0.01
        assert events.states[:3] == [S.STARTING, S.RUNNING, S.RETRYING]
    else:
        assert retry_at - events.state_times[0] >= 0.5
        assert events.states[:2] == [S.STARTING, S.RETRYING]
    assert supervisor.restarts >= 1
    assert await supervisor.stop() == S.FINISHED


@pytest.mark.parametrize(
    ("behaviour", "grace_s", "expected", "code"),
    [
        pytest.param([], 5.0, S.FINISHED, 0, id="quits-on-q"),
        pytest.param(["--fake-ignore-quit"], 5.0, S.FINISHED, 255, id="needs-sigint"),
        pytest.param(
            ["--fake-ignore-quit", "--fake-ignore-sigint"], 1.0, S.KILLED, -9, id="needs-sigkill"
        ),
    ],
)
async def test_graceful_stop_escalates_and_reaps(
    supervise: Supervise,
    behaviour: list[str],
    grace_s: float,
    expected: SupervisorState,
    code: int,
) -> None:
    supervisor, events = supervise(
        Commands(["--fake-interval", "0.05", *behaviour]), graceful_stop_timeout_s=grace_s
    )
    await wait_for_state(supervisor, S.RUNNING)  # the fake has set up its signal handlers
    pid = supervisor.pid
    assert pid is not None

    assert await supervisor.stop() == expected
    assert events.states == [S.STARTING, S.RUNNING, S.STOPPING, expected]
    assert [c for c, _ in events.exits] == [code]
    assert supervisor.pid is None
    assert reaped(pid)
    if code == 255:
        assert events.exits[0][1] == ["Exiting normally, received signal 2."]
    if expected is S.KILLED:
        assert "ignored 'q' and SIGINT" in supervisor.reason


async def test_stop_before_ffmpeg_handles_signals_is_a_clean_finish(
    supervise: Supervise, tmp_path: Path
) -> None:
    # Like an FFmpeg stopped in its first moments: no 'q' handling, SIGINT's default action.
    sleeper = _executable(tmp_path / "ffmpeg-sleeps", "#!/bin/sh\nexec sleep 600\n")
    supervisor, events = supervise(Commands([]), ffmpeg_path=sleeper)
    await eventually(lambda: supervisor.pid, timeout=WAIT_S, what="the process to start")
    pid = supervisor.pid
    assert await supervisor.stop() == S.FINISHED
    assert [code for code, _ in events.exits] == [-signal.SIGINT]
    assert events.states == [S.STARTING, S.STOPPING, S.FINISHED]
    assert supervisor.last_error is None
    assert reaped(pid)


async def test_stop_during_backoff_returns_without_starting_again(supervise: Supervise) -> None:
    commands = Commands(["--fake-blocks", "0", "--fake-exit", "1"])
    supervisor, events = supervise(commands, backoff_initial_s=120, backoff_max_s=120, jitter=0)
    await wait_for_state(supervisor, S.RETRYING)
    assert "restarting in 120.00 s" in supervisor.reason
    # Far below the 120 s backoff: stop() must not sit out the sleep.
    assert await asyncio.wait_for(supervisor.stop("job deleted"), WAIT_S) == S.FINISHED
    assert commands.calls == 1
    assert supervisor.restarts == 0
    assert events.states == [S.STARTING, S.RETRYING, S.STOPPING, S.FINISHED]
    assert supervisor.reason == "job deleted"
    assert len(events.exits) == 1


async def test_stop_before_start_finishes_without_a_process(fake_ffmpeg: str) -> None:
    commands = Commands(["--fake-interval", "0.05"])
    supervisor = FFmpegSupervisor(commands, config=SupervisorConfig(ffmpeg_path=fake_ffmpeg))
    assert await supervisor.stop() == S.FINISHED
    assert commands.calls == 0
    with pytest.raises(RuntimeError):
        supervisor.start()


async def test_unstartable_command_is_retried_not_crashed(supervise: Supervise) -> None:
    commands = Commands(["-i", "rtmp://host/app\0key"])
    supervisor, _ = supervise(commands, max_restarts=1)
    assert await asyncio.wait_for(supervisor.wait(), WAIT_S) == S.FAILED
    assert "NUL" in supervisor.reason
    assert commands.calls == 2


async def test_retry_now_restarts_at_once_without_counting_a_failure(
    supervise: Supervise,
) -> None:
    # Two exits the caller retries at once (a probe too short for the source), then a healthy
    # run: with a 30 s backoff and max_restarts=1, only retry_now can get there.
    fail = ["--fake-blocks", "0", "--fake-exit", "1", "--fake-final-stderr", "no codec parameters"]
    commands = Commands(fail, fail, ["--fake-interval", "0.05"])
    supervisor, events = supervise(
        commands, max_restarts=1, backoff_initial_s=30.0, backoff_max_s=30.0
    )

    async def retried_at_once(code: int, tail: list[str]) -> None:
        events.exits.append((code, tail))
        assert events.supervisor is not None
        events.supervisor.retry_now()

    supervisor._on_exit = retried_at_once  # the hook a run passes in; set before the first exit
    await wait_for_state(supervisor, S.RUNNING)
    assert commands.calls == 3
    assert [code for code, _ in events.exits] == [1, 1]
    retries = [r for s, r in zip(events.states, events.reasons, strict=True) if s is S.RETRYING]
    assert len(retries) == 2
    assert all(r.endswith("restarting in 0.00 s") for r in retries)
    assert supervisor.restarts == 2


async def test_retry_now_keeps_a_delay_asked_for(supervise: Supervise) -> None:
    commands = Commands(["--fake-blocks", "0", "--fake-exit", "1"], ["--fake-interval", "0.05"])
    supervisor, events = supervise(commands)

    async def both(code: int, tail: list[str]) -> None:
        events.exits.append((code, tail))
        assert events.supervisor is not None
        events.supervisor.retry_now()
        events.supervisor.delay_next_retry(0.3)

    supervisor._on_exit = both
    await wait_for_state(supervisor, S.RUNNING)
    assert events.reason_of(S.RETRYING).endswith("restarting in 0.30 s")


@pytest.mark.parametrize(
    ("env", "tz"),
    [
        pytest.param({"TZ": "UTC"}, "UTC", id="env-wins"),
        pytest.param(None, "Asia/Tokyo", id="no-env"),
    ],
)
async def test_env_is_merged_over_the_workers_environment(
    supervise: Supervise,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str] | None,
    tz: str,
) -> None:
    # A stand-in binary that records its environment, then becomes the fake (same pid).
    probe = _executable(
        tmp_path / "ffmpeg-env-probe",
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "out = sys.argv[sys.argv.index('--env-out') + 1]\n"
        "seen = {k: os.environ.get(k) for k in ('TZ', 'REELHOUSE_TEST_INHERITED')}\n"
        "with open(out, 'w') as f:\n"
        "    json.dump(seen, f)\n"
        f"os.execv(sys.executable, [sys.executable, {str(FAKE_FFMPEG)!r}, *sys.argv[1:]])\n",
    )
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    monkeypatch.setenv("REELHOUSE_TEST_INHERITED", "yes")
    out = tmp_path / "env.json"
    supervisor, _ = supervise(
        Commands(["--env-out", str(out), "--fake-interval", "0.05"]), env=env, ffmpeg_path=probe
    )
    await wait_for_state(supervisor, S.RUNNING)
    assert json.loads(out.read_text()) == {"TZ": tz, "REELHOUSE_TEST_INHERITED": "yes"}
    assert os.environ["TZ"] == "Asia/Tokyo"  # the worker's own environment is untouched
    assert await supervisor.stop() == S.FINISHED


# -- the transition table, with real FFmpeg ------------------------------------------------


def test_the_transition_table_covers_every_state_and_every_life_can_end() -> None:
    assert set(TRANSITIONS) == set(SupervisorState)
    for state, after in TRANSITIONS.items():
        assert state.terminal == (not after), state
        reachable, todo = set(), [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()] - reachable:
                reachable.add(nxt)
                todo.append(nxt)
        assert state.terminal or any(s.terminal for s in reachable), state


class Moves:
    """Every (before, after) pair a supervisor's ``on_state`` hook saw."""

    def __init__(self) -> None:
        self.moves: list[tuple[SupervisorState, SupervisorState]] = []
        self.before = S.STARTING  # a new supervisor's state

    async def on_state(self, state: SupervisorState, reason: str) -> None:
        self.moves.append((self.before, state))
        self.before = state


LIVE_TESTSRC = ["-re", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10"]
"""A live-paced picture: FFmpeg reports progress and never ends by itself."""


async def test_real_ffmpeg_moves_only_along_the_table_and_an_illegal_move_is_refused() -> None:
    ffmpeg = ["-hide_banner", "-nostdin", "-loglevel", "error"]
    # One healthy life: starting, running, stopped gracefully.
    healthy = Moves()
    supervisor = FFmpegSupervisor(
        lambda: [*ffmpeg, *LIVE_TESTSRC, "-f", "null", "-"],
        config=SupervisorConfig(stale_timeout_s=None, sigint_after_s=0.5),
        on_state=healthy.on_state,
    )
    supervisor.start()
    await wait_for_state(supervisor, S.RUNNING)
    assert await asyncio.wait_for(supervisor.stop("operator"), WAIT_S) is S.FINISHED
    assert healthy.moves == [
        (S.STARTING, S.STARTING), (S.STARTING, S.RUNNING),
        (S.RUNNING, S.STOPPING), (S.STOPPING, S.FINISHED),
    ]  # fmt: skip

    # A life that fails: a run that ends (an unrequested exit is a failure), then FFmpeg cannot
    # open its input at all, until the supervisor gives up.
    failing = Moves()
    runs = Commands(
        [*ffmpeg, *LIVE_TESTSRC, "-t", "0.5", "-f", "null", "-"],
        [*ffmpeg, "-f", "lavfi", "-i", "no_such_source", "-f", "null", "-"],
    )
    broken = FFmpegSupervisor(
        runs,
        config=SupervisorConfig(
            stale_timeout_s=None, max_restarts=2, backoff_initial_s=0.05, backoff_max_s=0.1
        ),
        on_state=failing.on_state,
    )
    broken.start()
    assert await asyncio.wait_for(broken.wait(), WAIT_S) is S.FAILED
    assert (S.RUNNING, S.RETRYING) in failing.moves
    assert (S.RETRYING, S.STARTING) in failing.moves
    assert failing.moves[-1] == (S.STARTING, S.FAILED)

    for before, after in healthy.moves + failing.moves:
        assert after in TRANSITIONS[before], (before, after)

    # The supervisor refuses what the table does not hold, and its state stays as it was.
    seen = len(healthy.moves)
    for illegal in (S.RUNNING, S.STARTING, S.STOPPING, S.KILLED):
        with pytest.raises(IllegalTransition) as refused:
            await supervisor._set_state(illegal, "a bug")
        assert (refused.value.before, refused.value.after) == (S.FINISHED, illegal)
        assert supervisor.state is S.FINISHED
        assert supervisor.reason == "operator"
    assert len(healthy.moves) == seen  # no hook heard of it


# -- FFmpeg dies with a SIGKILLed worker (PR_SET_PDEATHSIG) ----------------------------------

# A worker in miniature: supervise FFmpeg and write its pid once it has produced min_out_s of
# output, then run until killed.
_WORKER = """
import asyncio, os, sys
from reelhouse.common.ffmpeg.supervisor import FFmpegSupervisor, SupervisorConfig

async def main():
    ffmpeg, pid_file, min_out_s, *args = sys.argv[1:]

    async def on_progress(snapshot):
        if (snapshot.out_time_s or 0) >= float(min_out_s) and not os.path.exists(pid_file):
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(supervisor.pid))
            os.replace(pid_file + ".tmp", pid_file)

    config = SupervisorConfig(ffmpeg_path=ffmpeg, stale_timeout_s=None)
    supervisor = FFmpegSupervisor(lambda: args, config=config, on_progress=on_progress)
    supervisor.start()
    await supervisor.wait()

asyncio.run(main())
"""

_PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Make this process the subreaper of its descendants, so a killed worker's FFmpeg becomes
    our child: we can wait for it and read its exit status (and PID 1 need not reap zombies)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _exited(pid: int) -> tuple[int | None] | None:
    """``(wait status,)`` once the adopted ``pid`` has exited, ``(None,)`` if it is gone but was
    reaped before it reached us, None while it lives."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # A thread of the dying worker (asyncio's child watcher, blocked in waitpid) can reap
        # FFmpeg after the parent-death signal and before that thread itself dies.
        return None if Path(f"/proc/{pid}").exists() else (None,)
    return (status,) if got == pid else None


def sigkill_worker_and_reap_ffmpeg(
    tmp_path: Path,
    ffmpeg: str,
    args: list[str],
    *,
    min_out_s: float,
    ready: Callable[[], bool] = lambda: True,
) -> int | None:
    """Run a worker supervising FFmpeg until ``min_out_s`` of output and ``ready()``, SIGKILL
    the worker, wait until FFmpeg is gone, and return its wait status if it was ours to reap."""
    pid_file = tmp_path / "ffmpeg.pid"
    log_path = tmp_path / "worker.log"
    ffmpeg_pid: int | None = None
    with adopting_orphans(), log_path.open("wb") as log:
        argv = [sys.executable, "-c", _WORKER, ffmpeg, str(pid_file), str(min_out_s), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a SIGKILLed worker's log is complete
        worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            wait_until(
                lambda: pid_file.exists() or worker.poll() is not None,
                timeout=60,
                what="the worker's FFmpeg to make progress",
            )
            assert worker.poll() is None, log_path.read_text()
            ffmpeg_pid = int(pid_file.read_text())
            wait_until(ready, timeout=60, what="FFmpeg's output to be ready")
            worker.kill()
            assert worker.wait() == -signal.SIGKILL
            (status,) = wait_until(
                lambda: _exited(ffmpeg_pid),
                timeout=WAIT_S,
                what=f"FFmpeg (pid {ffmpeg_pid}) to exit after its worker was SIGKILLed",
            )
            ffmpeg_pid = None
            return status
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if ffmpeg_pid is not None:  # the test failed: do not leave it running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ffmpeg_pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(ffmpeg_pid, 0)


@linux_only
def test_fake_ffmpeg_gets_sigkill_when_its_worker_is_sigkilled(
    fake_ffmpeg: str, tmp_path: Path
) -> None:
    # Two blocks (out_time 0.1 s), then the fake hangs: it never writes to the broken pipe, and
    # nothing but the parent-death signal can end it.
    fake_args = ["--fake-blocks", "2", "--fake-interval", "0.05"]
    status = sigkill_worker_and_reap_ffmpeg(tmp_path, fake_ffmpeg, fake_args, min_out_s=0.1)
    if status is not None:  # we reaped it (almost always): see how it died
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL


@linux_only
@pytest.mark.slow
def test_real_ffmpeg_exits_when_its_worker_is_sigkilled(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    # -flush_packets 1: every fragment reaches the disk at once (FFmpeg otherwise writes files
    # in 256 KiB chunks), so the file is readable however FFmpeg's exit goes (see below).
    args = [
        "-hide_banner", "-loglevel", "error",
        "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-re", "-f", "lavfi", "-i", "sine",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
        "-flush_packets", "1",
        "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov", "-y", str(out),
    ]  # fmt: skip
    status = sigkill_worker_and_reap_ffmpeg(
        tmp_path, "ffmpeg", args, min_out_s=1.0, ready=lambda: b"moof" in out.read_bytes()
    )
    # The parent-death signal is SIGKILL (see the supervisor's module docstring): no handler,
    # no trailer, and the fragments FFmpeg flushed are a playable file.
    if status is not None:
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    codecs = sorted(s["codec_name"] for s in json.loads(probe.stdout)["streams"])
    assert codecs == ["aac", "h264"]


@pytest.mark.slow
async def test_real_ffmpeg_tee_gets_its_size_and_bitrate_from_the_byte_tap(tmp_path: Path) -> None:
    out = tmp_path / "copy.ts"
    progress: list[ProgressSnapshot] = []

    def args() -> list[str]:
        # A tee with one file slave and the tap: both get the same packets as MPEG-TS.
        slaves = f"[f=mpegts]{out}|[f=mpegts:onfail=ignore]{supervisor.open_tap()}"
        return [
            "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-b:v", "500k",
            "-map", "0:v", "-f", "tee", slaves,
        ]  # fmt: skip

    async def on_progress(snapshot: ProgressSnapshot) -> None:
        progress.append(snapshot)

    supervisor = FFmpegSupervisor(
        args,
        config=SupervisorConfig(stale_timeout_s=None, finish_on_success=True),
        on_progress=on_progress,
    )
    assert supervisor.tap_bytes is None
    pipes_before = pipes()
    supervisor.start()
    assert await asyncio.wait_for(supervisor.wait(), WAIT_S) is S.FINISHED
    last = progress[-1]
    assert last.ended
    assert supervisor.tap_bytes == out.stat().st_size > 0  # every byte, counted once
    assert last.total_size == str(out.stat().st_size)
    expected = out.stat().st_size * 8 / (last.out_time_s or 0) / 1000
    assert last.bitrate_kbits == round(expected)
    assert last.bitrate == f"{expected:.1f}kbits/s"
    assert pipes() <= pipes_before  # the tap's pipe is closed with the process


class _LiveFeed:
    """A live source in a file's clothes: the bytes of a recorded MPEG-TS, then nothing until
    closed (a live stream that has not ended), as streamlink's reader behaves."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = threading.Event()

    def read(self, size: int) -> bytes:
        if self.data:
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk
        self.closed.wait()
        return b""

    def close(self) -> None:
        self.closed.set()


@pytest.mark.slow
async def test_a_feed_reaches_ffmpeg_through_its_own_pipe_and_a_stop_finishes_the_file(
    tmp_path: Path,
) -> None:
    """``open_feed``: FFmpeg reads the source from a pipe of its own (not stdin). A stop while
    the source has nothing new (FFmpeg blocked in the pipe's read, deaf to 'q' and SIGINT) ends
    the feed: FFmpeg sees the end of its input and finishes the file; every pipe is closed."""
    source = tmp_path / "source.ts"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=size=320x240:rate=25", "-t", "3", "-c:v", "libx264",
         "-preset", "ultrafast", "-g", "25", "-f", "mpegts", str(source)],
        check=True,
    )  # fmt: skip
    out = tmp_path / "copy.mp4"
    feeds: list[_LiveFeed] = []
    urls: list[str] = []

    def args() -> list[str]:
        feeds.append(_LiveFeed(source.read_bytes()))
        urls.append(supervisor.open_feed(feeds[-1]))
        return [
            "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "pipe",
            "-analyzeduration", "1000000",  # less than the fed part: probing ends
            "-i", urls[-1], "-c", "copy", "-movflags", "+frag_keyframe+empty_moov", str(out),
        ]  # fmt: skip

    supervisor = FFmpegSupervisor(args, config=SupervisorConfig(stale_timeout_s=None))
    pipes_before = pipes()
    supervisor.start()

    # The whole recorded part arrives; FFmpeg then waits for more (the source is live).
    await eventually(lambda: not feeds[0].data, timeout=WAIT_S, what="FFmpeg to read the part")
    await eventually(lambda: supervisor.state is S.RUNNING, timeout=WAIT_S, what="progress")
    assert urls[0].startswith("pipe:")
    assert urls[0] != "pipe:0"
    await asyncio.wait_for(supervisor.stop(), WAIT_S)
    assert supervisor.state is S.FINISHED  # a clean stop, the trailer written, no SIGKILL
    assert supervisor.restarts == 0
    assert supervisor.feed_error is None
    await eventually(lambda: feeds[0].closed.is_set(), timeout=WAIT_S, what="the feed closed")
    probed = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", str(out)],
        check=True, capture_output=True,
    ).stdout)  # fmt: skip
    assert float(probed["format"]["duration"]) > 2.5
    await eventually(lambda: pipes() <= pipes_before, timeout=WAIT_S, what="pipes closed")


def pipes() -> set[str]:
    """This process's open pipe ends, as ``fd:pipe:[inode]``."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith("pipe:"):
                found.add(f"{fd}:{target}")
    return found


def test_build_argv_sets_the_progress_period_once() -> None:
    argv = build_argv("ffmpeg", ["-i", "in", "out.mp4"], progress_period_s=1.0)
    assert argv[argv.index("-stats_period") + 1] == "1"
    assert argv[-3:] == ["-i", "in", "out.mp4"]
    kept = build_argv("ffmpeg", ["-stats_period", "2", "-i", "in"], progress_period_s=1.0)
    assert kept.count("-stats_period") == 1
    assert kept[kept.index("-stats_period") + 1] == "2"
    assert "-stats_period" not in build_argv("ffmpeg", ["-i", "in"])
