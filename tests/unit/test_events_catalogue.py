"""docs/EVENTS.md is what scripts/events_catalogue.py writes from the event models: it cannot
drift from the code (run `make events-catalogue` after changing an event)."""

from __future__ import annotations

import importlib.util

import pytest
from support.infra import ROOT

pytestmark = pytest.mark.unit


def load_catalogue():
    spec = importlib.util.spec_from_file_location(
        "events_catalogue", ROOT / "scripts/events_catalogue.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_catalogue_is_the_generated_one() -> None:
    catalogue = load_catalogue()
    committed = (ROOT / "docs/EVENTS.md").read_text()
    assert committed == catalogue.render(), "docs/EVENTS.md is stale: run make events-catalogue"


def test_the_catalogue_lists_every_event() -> None:
    from reelhouse.common.subjects import EVENTS

    text = (ROOT / "docs/EVENTS.md").read_text()
    for name in EVENTS:
        assert f"\n## {name}\n" in text
