"""Contract base models: ids, timestamps and ``success`` as the seeds show them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from bson import ObjectId
from pydantic import BaseModel, ValidationError

from reelhouse.common.contracts.base import (
    ApiDocument,
    BusMessage,
    ObjectIdStr,
    format_timestamp,
    is_object_id,
    utcnow,
)
from reelhouse.common.errors import NotFound, ValidationFailed


def test_timestamps_look_like_the_seeds():
    t = datetime(2026, 3, 24, 12, 0, 0, 123456, tzinfo=UTC)
    assert format_timestamp(t) == "2026-03-24T12:00:00.123Z"
    plus_two = datetime(2026, 3, 24, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(plus_two) == "2026-03-24T12:00:00.000Z"
    assert utcnow().microsecond % 1000 == 0


def test_api_document_has_both_ids_and_success():
    oid = ObjectId("66004d2997300f9385d32b00")
    t = datetime(2026, 3, 24, 12, 0, tzinfo=UTC)
    doc = ApiDocument.model_validate({"_id": oid, "created": t, "modified": t, "name": "x"})
    out = doc.to_api()
    assert list(out)[:2] == ["_id", "id"]
    assert out["_id"] == out["id"] == "66004d2997300f9385d32b00"
    assert out["created"] == "2026-03-24T12:00:00.000Z"
    assert out["success"] is True
    assert out["name"] == "x"


class _Ref(BaseModel):
    ref: ObjectIdStr


@pytest.mark.parametrize("bad", ["66004d2997300f9385d32b0", "zz004d2997300f9385d32b00", "", "1"])
def test_object_id_strings_are_checked(bad):
    with pytest.raises(ValidationError):
        _Ref(ref=bad)
    assert not is_object_id(bad)


def test_bus_messages_ignore_unknown_fields():
    msg = BusMessage.model_validate_json('{"type": "x", "version": 2, "future": true}')
    assert msg.type == "x"
    assert msg.version == 2
    assert "future" not in msg.model_dump()


def test_errors_render_the_error_shape():
    body = ValidationFailed("recording_name is required", field="recording_name").to_body()
    assert body == {
        "success": False,
        "error": {
            "code": "VALIDATION_ERROR",
            "message": "recording_name is required",
            "field": "recording_name",
        },
    }
    assert NotFound("no such recording").status == 404
