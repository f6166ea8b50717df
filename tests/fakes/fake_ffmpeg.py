#!/usr/bin/env python3
"""A stand-in for ffmpeg whose misbehaviour a test controls (STYLE habit 10).

Only for behaviour real FFmpeg cannot be made to show on demand: crashing after K progress
blocks, hanging without progress, ignoring 'q' and SIGINT. Standard library only, so it runs
with any Python. Real ffmpeg options are accepted and ignored, except that progress blocks are
written to stdout only when ``-progress pipe:1`` is among the arguments (as with FFmpeg).

Behaviour comes from ``--fake-*`` arguments, or from ``FAKE_FFMPEG_ARGS`` in the environment
(split with shlex) when a test cannot change the argument list::

    --fake-blocks K         write K progress blocks, then crash (--fake-exit) or hang;
                            -1 (default) = write blocks until stopped
    --fake-interval S       seconds between blocks (default 0.1)
    --fake-exit N           exit with code N after the K blocks (default: hang instead)
    --fake-stderr LINE      write LINE to stderr at start (repeatable)
    --fake-final-stderr L   write L to stderr just before the --fake-exit
    --fake-ignore-quit      ignore 'q' on stdin (normally: write progress=end, exit 0)
    --fake-ignore-sigint    ignore SIGINT (normally: exit 255 like FFmpeg)
"""

from __future__ import annotations

import argparse
import itertools
import os
import selectors
import shlex
import signal
import sys
import time


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--fake-blocks", type=int, default=-1)
    parser.add_argument("--fake-interval", type=float, default=0.1)
    parser.add_argument("--fake-exit", type=int, default=None)
    parser.add_argument("--fake-stderr", action="append", default=[])
    parser.add_argument("--fake-final-stderr", default=None)
    parser.add_argument("--fake-ignore-quit", action="store_true")
    parser.add_argument("--fake-ignore-sigint", action="store_true")
    options, _ffmpeg_args = parser.parse_known_args(argv)
    return options


def _block(n: int, interval: float, progress: str) -> str:
    frames = n * 25
    out_us = int(n * interval * 1_000_000)
    total_size = n * 65_536
    bitrate = f"{total_size * 8 / (out_us / 1000):6.1f}kbits/s" if out_us else "N/A"
    return (
        f"frame={frames}\nfps=25.00\nstream_0_0_q=20.0\nbitrate={bitrate}\n"
        f"total_size={total_size}\nout_time_us={out_us}\nout_time_ms={out_us}\n"
        f"out_time=00:00:{out_us / 1_000_000:09.6f}\ndup_frames=0\ndrop_frames=0\n"
        f"speed=1.00x\nprogress={progress}\n"
    )


def main() -> int:
    """Run the fake; returns the exit code."""
    argv = sys.argv[1:] + shlex.split(os.environ.get("FAKE_FFMPEG_ARGS", ""))
    opts = _options(argv)
    progress = any(a == "-progress" and b == "pipe:1" for a, b in itertools.pairwise(argv))

    def on_sigint(_signum: int, _frame: object) -> None:
        sys.stderr.write("Exiting normally, received signal 2.\n")
        sys.stderr.flush()
        os._exit(255)

    signal.signal(signal.SIGINT, signal.SIG_IGN if opts.fake_ignore_sigint else on_sigint)

    for line in opts.fake_stderr:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()

    def crash() -> int:
        if opts.fake_final_stderr:
            sys.stderr.write(opts.fake_final_stderr + "\n")
            sys.stderr.flush()
        return opts.fake_exit

    if opts.fake_blocks == 0 and opts.fake_exit is not None:
        return crash()

    # poll, not epoll: stdin may be /dev/null, which epoll refuses.
    selector = selectors.PollSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
    written = 0
    emitting = opts.fake_blocks != 0
    next_block = time.monotonic() + opts.fake_interval
    while True:
        timeout = max(0.0, next_block - time.monotonic()) if emitting else None
        for _key, _events in selector.select(timeout):
            data = os.read(sys.stdin.fileno(), 1024)
            if not data:  # stdin closed: nothing more to read, keep running
                selector.unregister(sys.stdin.fileno())
            elif b"q" in data and not opts.fake_ignore_quit:
                if progress:
                    sys.stdout.write(_block(written, opts.fake_interval, "end"))
                    sys.stdout.flush()
                return 0
        if not selector.get_map() and not emitting:
            signal.pause()  # hang: nothing to read, nothing to write
            continue
        if emitting and time.monotonic() >= next_block:
            written += 1
            if progress:
                sys.stdout.write(_block(written, opts.fake_interval, "continue"))
                sys.stdout.flush()
            next_block += opts.fake_interval
            if written == opts.fake_blocks:
                if opts.fake_exit is not None:
                    return crash()
                emitting = False


if __name__ == "__main__":
    sys.exit(main())
