"""Every process's output on `make up`'s console, each line led by the process's name.

supervisord (which `make up` runs the stack under) can copy a program's output to its own
stdout, but not with the program's name in front, and the lines of eight processes without
names cannot be read. What it offers instead is its event-listener protocol: it hands each
chunk of a program's output to a listener (``PROCESS_LOG_STDOUT``, the process name in the
event's headers), and the listener's answer to a ``result_handler`` that runs inside supervisord.
This module is both halves, and nothing more:

- ``python scripts/log_prefix.py listen`` is the ``[eventlistener:logs]`` program: it answers
  every event with the event itself (``supervisor.childutils`` speaks the protocol).
- ``log_prefix:write`` is its ``result_handler``: inside supervisord, it keeps each process's
  unfinished last line until the newline comes and writes complete lines as
  ``HH:MM:SS recorder.2 | <line>`` to supervisord's stdout, the stream supervisord writes its
  own lines to ("spawned", "exited"), so the two never overwrite or split each other.
- ``python scripts/log_prefix.py supervisord -c FILE`` runs supervisord with this directory
  importable, which the ``result_handler`` needs.

``UP_LOG_WIDTH`` (set by scripts/up.sh) is the longest process name, so that the bars line up.
"""

from __future__ import annotations

import io
import os
import sys
import time

# An unfinished line longer than this is written as it is rather than kept whole in memory.
MAX_PENDING = 64 * 1024

_pending: dict[bytes, tuple[bytes, bytes]] = {}  # process name -> (pid, unfinished line)


def split_output(name: bytes, pid: bytes, data: bytes) -> list[bytes]:
    """The complete lines of ``name``'s output once ``data`` is added; keeps the unfinished rest."""
    kept_pid, kept = _pending.pop(name, (pid, b""))
    lines = []
    if kept and kept_pid != pid:  # the process was started again: its last words stand alone
        lines.append(kept)
        kept = b""
    *complete, rest = (kept + data).split(b"\n")
    lines += [line.removesuffix(b"\r") for line in complete]
    if len(rest) > MAX_PENDING:
        lines.append(rest)
    elif rest:
        _pending[name] = (pid, rest)
    return lines


def write(event: object, response: bytes) -> None:
    """supervisord's ``result_handler``: ``response`` is a PROCESS_LOG event's payload."""
    header, _, data = response.partition(b"\n")
    fields = dict(item.split(b":", 1) for item in header.split())
    name = fields[b"processname"]
    lines = split_output(name, fields[b"pid"], data)
    if not lines:
        return
    width = int(os.environ.get("UP_LOG_WIDTH", "12"))
    lead = f"{time.strftime('%H:%M:%S')} {name.decode(errors='replace'):<{width}} | ".encode()
    out = sys.stdout
    out.flush()  # supervisord's own lines go through the text layer: keep the order
    out.buffer.write(b"".join(lead + line + b"\n" for line in lines))
    out.buffer.flush()


def listen() -> None:
    """The event listener: answer every event with its payload, for ``write`` to print."""
    from supervisor import childutils

    # The envelope's `len` counts characters of UTF-8 text, the answer's `RESULT n` counts
    # bytes: read text (keeping "\r\n" as it is, so the count holds), answer in bytes.
    events = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    answers = sys.stdout.buffer
    while True:
        childutils.listener.ready(sys.stdout)
        headers = childutils.get_headers(events.readline())
        payload = events.read(int(headers["len"])).encode()
        answers.write(b"RESULT %d\n%s" % (len(payload), payload))
        answers.flush()


def run_supervisord(args: list[str]) -> None:
    """supervisord itself; Python has put this script's directory first on ``sys.path``."""
    from supervisor import supervisord

    supervisord.main(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["listen"]:
        listen()
    elif sys.argv[1:2] == ["supervisord"]:
        run_supervisord(sys.argv[2:])
    else:
        sys.exit("usage: log_prefix.py listen | supervisord -c FILE")
