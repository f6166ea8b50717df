"""Disk watermarks without services: levels, settings, the 507 error, ENOSPC classification."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reelhouse.common.errors import InsufficientStorage, ReelhouseError
from reelhouse.common.ffmpeg.failures import classify, classify_lines
from reelhouse.common.settings import CommonSettings
from reelhouse.common.storage import disk_state
from reelhouse.common.subjects import Subjects
from reelhouse.janitor.settings import JanitorSettings
from reelhouse.recorder.settings import RecorderSettings


def _used(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


def test_levels_follow_the_real_usage_of_the_storage_filesystem(tmp_path):
    root = tmp_path / "not" / "there" / "yet"
    used = _used(tmp_path)
    if used < 2 or used > 98:
        pytest.skip(f"the filesystem is {used:.2f}% used; no level fits on both sides")
    ok = disk_state(root, warning_pct=used + 1, critical_pct=used + 1.5)
    assert root.is_dir()
    assert ok.level == "ok"
    assert 0 < ok.free <= ok.total
    assert ok.used_pct == pytest.approx(used, abs=0.5)
    assert disk_state(root, warning_pct=used - 1, critical_pct=used + 1).level == "warning"
    assert disk_state(root, warning_pct=used - 1.5, critical_pct=used - 1).level == "critical"
    too_little = disk_state(root, warning_pct=100, critical_pct=100, min_free_bytes=ok.free * 2)
    assert too_little.level == "critical"
    text = disk_state(root, warning_pct=80, critical_pct=90).describe()
    assert "% full" in text
    assert "critical level 90%" in text
    assert "warning level 80%" in text


@pytest.mark.parametrize("cls", [CommonSettings, RecorderSettings, JanitorSettings])
def test_every_service_reads_the_same_watermark_settings(monkeypatch, cls):
    assert (cls().disk_warning_pct, cls().disk_critical_pct) == (85.0, 95.0)
    monkeypatch.setenv("REELHOUSE_DISK_WARNING_PCT", "70")
    monkeypatch.setenv("REELHOUSE_DISK_CRITICAL_PCT", "75.5")
    settings = cls()
    assert (settings.disk_warning_pct, settings.disk_critical_pct) == (70.0, 75.5)


def test_watermarks_are_percentages(monkeypatch):
    monkeypatch.setenv("REELHOUSE_DISK_CRITICAL_PCT", "101")
    with pytest.raises(ValueError, match="disk_critical_pct"):
        CommonSettings()


def test_insufficient_storage_is_a_507_in_the_error_shape():
    error = InsufficientStorage("storage is 97.0% full")
    assert isinstance(error, ReelhouseError)
    assert error.status == 507
    assert error.to_body() == {
        "success": False,
        "error": {"code": "INSUFFICIENT_STORAGE", "message": "storage is 97.0% full"},
    }


@pytest.mark.parametrize(
    "line",
    [
        "av_interleaved_write_frame(): No space left on device",
        "[hls @ 0x55d1c3e0] Failed to open file 'seg-3.ts': No space left on device",
        "Error writing trailer of out.mp4: No space left on device",
        "[mp4 @ 0x5600] Error writing to file: ENOSPC",
    ],
)
def test_enospc_is_disk_full_not_protocol_error(line):
    assert classify(line) == "disk_full"


def test_disk_full_wins_over_a_generic_protocol_error_in_a_tail():
    tail = [
        "[tcp @ 0x1] Connection reset by peer",
        "Error writing trailer: No space left on device",
    ]
    assert classify_lines(tail) == "disk_full"
    assert classify_lines(["[tcp @ 0x1] Connection reset by peer"]) == "protocol_error"


def test_disk_warning_has_its_own_storage_subject():
    s = Subjects("reelhouse")
    assert s.storage_event("disk_warning") == "reelhouse.evt.storage.disk_warning"
    assert s.storage_event("disk_warning").startswith(s.all_events()[:-1])
    with pytest.raises(ValueError, match="unknown event"):
        s.storage_event("disk_full")  # type: ignore[arg-type]
