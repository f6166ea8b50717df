"""The event models (reelhouse.common.events) against the ``Event`` list, and ``parse_event``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from reelhouse.common.contracts.channels import ChannelEvent, PlatformAuthEvent
from reelhouse.common.contracts.ingest import IngestEvent
from reelhouse.common.contracts.messages import JobEvent
from reelhouse.common.events import (
    EVENT_MODELS,
    MODEL_BY_TYPE,
    JobRetrying,
    PublisherBack,
    UnknownEvent,
    build_event,
    event_type,
    parse_event,
)
from reelhouse.common.subjects import EVENTS

pytestmark = pytest.mark.unit

JOB = "0123456789abcdef01234567"


def test_every_event_name_has_exactly_one_model() -> None:
    types = Counter(event_type(m) for m in EVENT_MODELS)
    assert [t for t, n in types.items() if n > 1] == []
    assert sorted(types) == sorted(EVENTS)
    assert [event_type(m) for m in EVENT_MODELS] == list(EVENTS)  # same order as the list


@pytest.mark.parametrize("model", EVENT_MODELS, ids=event_type)
def test_every_model_names_its_subject(model: type) -> None:
    subject = model.subject  # type: ignore[attr-defined]
    assert subject.startswith("<p>.evt.")
    assert subject.endswith("." + event_type(model))


def test_a_known_type_parses_to_its_model() -> None:
    event = JobRetrying(module="restream", job_id=JOB, tenant="t", restarts=2, reason="exit 1")
    parsed = parse_event(event.model_dump_json())
    assert type(parsed) is JobRetrying
    assert parsed == event
    back = parse_event(
        json.loads(PublisherBack(job_id=JOB, tenant="t", gap_ms=5).model_dump_json())
    )
    assert type(back) is PublisherBack
    assert back.gap_ms == 5


def test_an_unknown_type_parses_to_the_fallback_with_every_field() -> None:
    parsed = parse_event(b'{"type": "from_the_future", "version": 3, "job_id": "x", "n": 1}')
    assert type(parsed) is UnknownEvent
    assert parsed.type == "from_the_future"
    assert parsed.version == 3
    assert parsed.model_dump()["n"] == 1


def test_no_type_is_not_an_event() -> None:
    with pytest.raises(ValidationError):
        parse_event(b'{"version": 1}')


FAMILY_SAMPLES = {  # the most specific family first (an IngestEvent is a JobEvent)
    IngestEvent: {"proto": "srt", "name": "a/b", "gap_ms": 3},
    JobEvent: {"module": "recording", "file": {"a": 1}, "reason": "r", "channel_id": JOB},
    ChannelEvent: {"channel_id": JOB, "status": "live", "title": "t", "extra": {"q": 1}},
    PlatformAuthEvent: {"platform": "twitch", "reason": "r"},
}


def _family(model: type) -> type | None:
    return next((f for f in FAMILY_SAMPLES if issubclass(model, f)), None)


# Models of a family; the few that keep a model of their own (disk_warning, stream_status, ...)
# had no family format to keep.
FAMILY_MODELS = [m for m in EVENT_MODELS
                 if _family(m) is not None and m.__module__.endswith(".events")]  # fmt: skip


def test_most_events_belong_to_a_family() -> None:
    assert len(FAMILY_MODELS) >= len(EVENT_MODELS) - 4


@pytest.mark.parametrize("model", FAMILY_MODELS, ids=event_type)
def test_a_model_serialises_as_its_family_did(model: type) -> None:
    """Same keys, same order, same values: the wire format does not change."""
    family = _family(model)
    assert family is not None
    name = event_type(model)
    fields = {"job_id": JOB, "tenant": "t", "node": "n", **FAMILY_SAMPLES[family]}
    old = family(type=name, **fields)
    new = build_event(name, **fields, timestamp=old.timestamp)
    assert type(new) is model
    assert new.model_dump_json() == old.model_dump_json()
    assert MODEL_BY_TYPE[name] is model
