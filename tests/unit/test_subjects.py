"""The subject scheme of docs/ARCHITECTURE.md §3, built in one module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reelhouse.common.subjects import EVENTS, Subjects

JOB = "66004d2997300f9385d32b00"
ROOT = Path(__file__).resolve().parents[2]


def test_subjects_follow_the_scheme():
    s = Subjects("reelhouse")
    assert s.command("recorder", "start") == "reelhouse.cmd.recorder.start"
    assert s.commands("restreamer") == "reelhouse.cmd.restreamer.*"
    assert s.probe() == "reelhouse.req.prober.probe"
    assert s.stats("recording", JOB) == f"reelhouse.stats.recording.{JOB}"
    assert s.all_stats() == "reelhouse.stats.>"
    assert s.all_stats("restream") == "reelhouse.stats.restream.*"
    assert s.event("stream", JOB, "stream_status") == f"reelhouse.evt.stream.{JOB}.stream_status"
    assert s.all_events() == "reelhouse.evt.>"
    assert s.auth_event("auth_refresh_reuse") == "reelhouse.evt.auth.auth_refresh_reuse"
    assert s.auth_changed() == "reelhouse.auth.changed"
    assert not s.auth_changed().startswith(s.all_events()[:-1])  # not kept as an event


def test_prefix_separates_deployments():
    assert Subjects("site-b").stats("restream", JOB).startswith("site-b.stats.")
    assert Subjects("site-b").events_stream_name() == "SITE_B_EVENTS"


@pytest.mark.parametrize(
    "job_id",
    ["Main program archive", "srt://127.0.0.1:1935", JOB + ".>", JOB.upper(), "*", ""],
)
def test_user_text_never_becomes_a_subject_token(job_id):
    with pytest.raises(ValueError, match="24-hex"):
        Subjects().stats("recording", job_id)


@pytest.mark.parametrize("prefix", ["", "a.b", "a b", ">", "x*"])
def test_prefix_must_be_one_token(prefix):
    with pytest.raises(ValueError, match="one NATS token"):
        Subjects(prefix)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown event"):
        Subjects().event("recording", JOB, "job_exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown service"):
        Subjects().command("toaster", "start")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown module"):
        Subjects().stats("recordings", JOB)  # type: ignore[arg-type]


def test_every_architecture_event_is_known():
    expected = [
        "job_started",
        "job_stopped",
        "job_failed",
        "job_retrying",
        "file_opened",
        "file_closed",
        "file_ready",
        "file_failed",
        "file_deleted",
        "file_archived",
        "processing_started",
        "processing_progress",
        "processing_complete",
        "processing_failed",
        "quota_exceeded",
        "disk_warning",
        "stream_status",
        "config_reloaded",
    ]
    # Added by Reelhouse (docs/DECISIONS.md "Pause and resume"): the API's pause/resume.
    added = ["job_paused", "job_resumed", "schedule_skip"]
    # Issue 20: a refresh token presented twice (docs/SECURITY.md).
    added.append("auth_refresh_reuse")
    # Issue 21: ingest (docs/INGEST.md, "What lives where").
    added += ["ingest_refused", "publisher_up", "publisher_lost", "publisher_back",
              "publisher_replaced", "contribution_ended"]  # fmt: skip
    # Issue 22: the channel-recorder seed's events.
    added += ["channel_status", "channel_error", "recording_started", "segment_downloaded",
              "recording_ended", "filter_skip", "quota_skip", "quota_status_changed",
              "platform_auth_updated", "platform_auth_expired"]  # fmt: skip
    # Issue 24: uploads to object storage (docs/DECISIONS.md "Object storage").
    added += ["upload_started", "upload_progress", "upload_complete", "upload_failed"]
    assert set(EVENTS) == set(expected) | set(added)


def test_no_subject_literals_outside_the_subjects_module():
    pattern = re.compile(r"""["'](reelhouse|\{[a-z_.]*prefix\})\.(cmd|req|stats|evt)\b""")
    offenders = []
    for path in [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]:
        if path.name == "subjects.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
    # The scan itself can fail: a literal in the usual form is caught.
    assert pattern.search('nc.publish("reelhouse.stats.recording.x")')


def test_nats_server_versions_below_2_11_are_refused_by_name():
    from reelhouse.common.bus import check_server_version, parse_version

    assert parse_version("2.15.3") == (2, 15, 3)
    assert parse_version("v2.11.0-RC.1") == (2, 11, 0)
    assert parse_version("2.11") == (2, 11, 0)
    assert check_server_version("2.15.3") is None
    assert check_server_version("2.11.0") is None
    reason = check_server_version("2.9.10")
    assert reason is not None
    assert "2.9.10" in reason
    assert "2.11" in reason
    assert check_server_version("nonsense") is not None


def test_ingest_subjects_and_keys_carry_no_user_text():
    s = Subjects("reelhouse")
    server = "680400000000000000000001"
    assert s.stats("ingest", server) == f"reelhouse.stats.ingest.{server}"
    assert s.event("ingest", server, "ingest_refused") == (
        f"reelhouse.evt.ingest.{server}.ingest_refused"
    )
    assert s.command("ingest", "reload") == "reelhouse.cmd.ingest.reload"
    key = s.live_ingest(server, "main-stage/srt-main")
    assert key.startswith(f"ingest.{server}.")
    token = key.rsplit(".", 1)[1]
    assert "main" not in token
    assert len(token) == 24
    # distinct names, distinct keys (a slash and an underscore do not collide)
    assert s.live_ingest(server, "a/b") != s.live_ingest(server, "a_b")
    assert s.live_ingest_stats(server) == f"ingeststats.{server}"
    with pytest.raises(ValueError, match="ObjectId"):
        s.live_ingest("not-an-id", "x")
