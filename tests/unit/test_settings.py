"""Settings are validated at start and named by their environment variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reelhouse.api.settings import ApiSettings
from reelhouse.common.settings import CommonSettings, env_name, env_names, load_settings
from reelhouse.recorder.settings import RecorderSettings


def test_defaults_are_the_embedded_local_stack(monkeypatch):
    for name in env_names(ApiSettings):
        monkeypatch.delenv(name, raising=False)
    s = ApiSettings()
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.mongodb_url == "mongodb://127.0.0.1:27017/"
    assert s.api_host == "127.0.0.1"
    assert s.api_port == 8080
    assert str(s.storage_root) == "data/recordings"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("REELHOUSE_MAX_JOBS", "7")
    monkeypatch.setenv("REELHOUSE_SUBJECT_PREFIX", "site-b")
    s = RecorderSettings()
    assert s.max_jobs == 7
    assert s.subject_prefix == "site-b"


def test_env_names_carry_the_prefix():
    assert env_name(RecorderSettings, "max_jobs") == "REELHOUSE_MAX_JOBS"
    assert "REELHOUSE_BOOTSTRAP_TOKEN" in env_names(ApiSettings)
    assert "REELHOUSE_MAX_JOBS" not in env_names(ApiSettings)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REELHOUSE_SUBJECT_PREFIX", "a.b"),
        ("REELHOUSE_MONGODB_DATABASE", "bad/name"),
        ("REELHOUSE_LOG_LEVEL", "loud"),
        ("REELHOUSE_NODE_HEARTBEAT_S", "-1"),
    ],
)
def test_bad_values_exit_2_naming_the_variable(monkeypatch, capsys, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        load_settings(CommonSettings, program="reelhouse-test")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"reelhouse-test: invalid setting {var}={value!r}" in err


def test_settings_are_immutable():
    s = CommonSettings()
    with pytest.raises(ValidationError):
        s.nats_url = "nats://elsewhere:4222"  # type: ignore[misc]
