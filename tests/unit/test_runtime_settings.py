"""Runtime settings as a worker applies them (pure part: what the settings object should hold)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reelhouse.common.runtime import RuntimeSettings, RuntimeSettingsWatcher
from reelhouse.recorder.settings import RecorderSettings


def watcher(**env: object) -> RuntimeSettingsWatcher:
    settings = RecorderSettings(**env)  # type: ignore[arg-type]
    return RuntimeSettingsWatcher(
        db=None,  # type: ignore[arg-type]  # desired()/apply() never touch the database
        bus=None,
        settings=settings,
        service="recorder",
        node_id="recorder-a",
    )


def test_probe_ms_overrides_the_environment_and_falls_back_when_unset() -> None:
    w = watcher(probe_ms=1500)
    assert w.desired(RuntimeSettings(probe_ms=400))["probe_ms"] == 400
    assert w.apply(RuntimeSettings(probe_ms=400)) == {"probe_ms": 400}
    assert w.settings.probe_ms == 400
    assert w.apply(RuntimeSettings()) == {"probe_ms": 1500}  # unset again: the environment's
    assert w.settings.probe_ms == 1500


@pytest.mark.parametrize("value", [0, 99, 10_001])
def test_probe_ms_out_of_range_is_refused_naming_the_field(value: int) -> None:
    with pytest.raises(ValidationError) as exc:
        RuntimeSettings(probe_ms=value)
    assert exc.value.errors()[0]["loc"] == ("probe_ms",)
