"""`make up`'s log prefixer: whole lines, each under the name of the process that wrote it."""

from __future__ import annotations

import importlib.util
import re

import pytest
from support.infra import ROOT


@pytest.fixture
def log_prefix():
    spec = importlib.util.spec_from_file_location("log_prefix", ROOT / "scripts/log_prefix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a fresh module: no unfinished lines from another test
    return module


def event(name: str, pid: int, data: bytes) -> bytes:
    """A PROCESS_LOG payload as supervisord builds it."""
    head = f"processname:{name} groupname:services pid:{pid} channel:stdout\n"
    return head.encode() + data


def test_a_line_split_across_chunks_is_written_once_whole(log_prefix, capsys, monkeypatch):
    monkeypatch.setenv("UP_LOG_WIDTH", "12")
    log_prefix.write(None, event("recorder.2", 40, b'{"event": "a"}\n{"event": "b'))
    log_prefix.write(None, event("api.1", 41, b"GET /api/health\r\n"))
    log_prefix.write(None, event("recorder.2", 40, b'"}\n'))
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines] == [
        'recorder.2   | {"event": "a"}',
        "api.1        | GET /api/health",
        'recorder.2   | {"event": "b"}',
    ]


def test_a_restarted_process_does_not_finish_its_predecessors_line(log_prefix):
    assert log_prefix.split_output(b"db.1", b"7", b"half a li") == []
    assert log_prefix.split_output(b"db.1", b"8", b"started\n") == [b"half a li", b"started"]
    assert log_prefix.split_output(b"db.1", b"8", b"") == []


def test_an_endless_line_is_not_kept_forever(log_prefix):
    long = b"x" * (log_prefix.MAX_PENDING + 1)
    assert log_prefix.split_output(b"nats.1", b"9", long) == [long]
    assert log_prefix.split_output(b"nats.1", b"9", b"next\n") == [b"next"]
