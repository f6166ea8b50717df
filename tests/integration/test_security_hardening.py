"""Errors, limits, hardening (issue 7): one error shape everywhere, 413, Idempotency-Key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.auth import make_key
from support.seeds import recording_payload, restream_payload, seed_payloads
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.settings import ApiSettings


@pytest.fixture
async def client(settings_env):
    settings = settings_from_env(
        ApiSettings, settings_env, bootstrap_token=TOKEN, max_body_bytes=64 * 1024
    )
    async with api_client(settings) as c:
        yield c


def shape(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


async def test_the_error_shape_everywhere(client):
    shape(await client.get("/api/nothing/here", headers=HEADERS), 404, "NOT_FOUND")
    shape(await client.get("/api/recording/create", headers=HEADERS), 405, "METHOD_NOT_ALLOWED")
    r = await client.post(
        "/api/recording/create",
        content=b'{"recording_name": ',
        headers={**HEADERS, "content-type": "application/json"},
    )
    assert shape(r, 400, "VALIDATION_ERROR")["field"] == "body"
    body = recording_payload(0, active=False)
    body["input"]["input_type"] = "INPUT_TYPE_NOPE"
    r = await client.post("/api/recording/create", json=body, headers=HEADERS)
    error = shape(r, 400, "VALIDATION_ERROR")
    assert error["field"] == "input.input_type"
    assert error["details"][0]["field"] == "input.input_type"
    shape(await client.post("/api/recording/getAll", json={}), 401, "UNAUTHORIZED")


async def test_oversized_bodies_are_413(client):
    big = b'{"recording_name": "' + b"x" * (70 * 1024) + b'"}'
    r = await client.post(
        "/api/recording/create",
        content=big,
        headers={**HEADERS, "content-type": "application/json"},
    )
    assert "65536 bytes" in shape(r, 413, "PAYLOAD_TOO_LARGE")["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while reading
        yield b'{"recording_name": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    r = await client.post(
        "/api/recording/create",
        content=chunks(),
        headers={**HEADERS, "content-type": "application/json"},
    )
    shape(r, 413, "PAYLOAD_TOO_LARGE")
    # a body under the limit is fine
    r = await client.post("/api/recording/getAll", json={}, headers=HEADERS)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("module", "body"),
    [
        ("recording", recording_payload(0, active=False)),
        ("restream", restream_payload(0, active=False)),
        ("streams", seed_payloads("streams-api.txt", "/api/streams/create")[0]),
    ],
)
async def test_idempotency_key_on_create(client, module, body):
    operator = await make_key(client, "operator")
    url = f"/api/{module}/create"
    headers = {**operator.headers, "Idempotency-Key": f"{module}-once-1"}
    first = await client.post(url, json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.post(url, json=body, headers=headers)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    count = await client.post(f"/api/{module}/getCount", json={}, headers=HEADERS)
    assert count.json()["count"] == 1

    # the same key with another body is a conflict; another key creates another
    other = dict(body)
    name_field = {"recording": "recording_name", "restream": "restream_name", "streams": "name"}
    other[name_field[module]] = "something else"
    r = await client.post(url, json=other, headers=headers)
    assert shape(r, 409, "CONFLICT")["field"] == "Idempotency-Key"
    r = await client.post(url, json=body, headers={**headers, "Idempotency-Key": "another"})
    assert r.status_code == 200
    assert r.json()["id"] != first.json()["id"]
    # without a key every call creates
    r = await client.post(url, json=body, headers=operator.headers)
    assert r.status_code == 200
    count = await client.post(f"/api/{module}/getCount", json={}, headers=HEADERS)
    assert count.json()["count"] == 3


async def test_concurrent_retries_with_one_key_create_one_job(client):
    body = recording_payload(0, active=False)
    headers = {**HEADERS, "Idempotency-Key": "burst"}
    answers = await asyncio.gather(
        *(client.post("/api/recording/create", json=body, headers=headers) for _ in range(4))
    )
    ok = [r for r in answers if r.status_code == 200]
    assert ok
    assert all(r.status_code in (200, 409) for r in answers)
    assert len({r.json()["id"] for r in ok}) == 1
    count = await client.post("/api/recording/getCount", json={}, headers=HEADERS)
    assert count.json()["count"] == 1


async def test_a_failed_create_frees_its_key(client):
    body = recording_payload(0, active=False)
    bad = {**body, "recording_mode": "RECORDING_MODE_NOPE"}
    headers = {**HEADERS, "Idempotency-Key": "retry-after-fix"}
    r = await client.post("/api/recording/create", json=bad, headers=headers)
    assert r.status_code == 400
    r = await client.post("/api/recording/create", json=body, headers=headers)
    assert r.status_code == 200
    r = await client.post(
        "/api/recording/create", json=body, headers={**HEADERS, "Idempotency-Key": "k" * 256}
    )
    assert shape(r, 400, "VALIDATION_ERROR")["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": [[1, 2]]}, "array inside an array"),
        ({"a.b": 1}, "not allowed"),
        ({"$where": "1"}, "not allowed"),
        ({"n": 2**70}, "64 bits"),
        ({"a": "x\x00y"}, "NUL character (at a)"),
        ({"a": {"b": ["ok", "\x00"]}}, "NUL character (at a.b[1])"),
        ({"k\x00": 1}, "not allowed"),
    ],
)
async def test_free_form_objects_the_database_cannot_store_are_400(client, value, message):
    """These reached FerretDB and came back as 500s (found while fuzzing the spec)."""
    for module, body in (
        ("recording", recording_payload(0, active=False)),
        ("restream", restream_payload(0, active=False)),
    ):
        for key in ("input_settings", "input_stream_listen_port"):
            sent = {**body, "input": {**body["input"], key: value}}
            r = await client.post(f"/api/{module}/create", json=sent, headers=HEADERS)
            error = shape(r, 400, "VALIDATION_ERROR")
            assert error["field"] == f"input.{key}"
            assert message in error["message"]
    stream = seed_payloads("streams-api.txt", "/api/streams/create")[0]
    r = await client.post(
        "/api/streams/create", json={**stream, "stream_meta_data": value}, headers=HEADERS
    )
    assert message in shape(r, 400, "VALIDATION_ERROR")["message"]
    r = await client.post("/api/recording/getAll", json={"skip": 2**64}, headers=HEADERS)
    assert shape(r, 400, "VALIDATION_ERROR")["field"] == "skip"
    r = await client.post("/api/recording/getFiles", json={"offset": 2**64}, headers=HEADERS)
    assert shape(r, 400, "VALIDATION_ERROR")["field"] == "offset"


async def test_nul_in_stored_or_queried_strings_is_400_and_stores_nothing(client):
    """PostgreSQL under FerretDB refuses NUL in any text, stored or compared (a 500 that
    schemathesis found in ``input.input_settings``): every such string refuses it first."""
    body = recording_payload(0, active=False)
    sent = {**body, "input": {**body["input"], "input_settings": {"a": {"b": "x\x00"}}}}
    r = await client.post("/api/recording/create", json=sent, headers=HEADERS)
    error = shape(r, 400, "VALIDATION_ERROR")
    assert error["field"] == "input.input_settings"
    assert "NUL" in error["message"]
    count = await client.post("/api/recording/getCount", json={}, headers=HEADERS)
    assert count.json()["count"] == 0
    for path, sent, field in [
        ("/api/recording/create", {**body, "overlay": {"type": "TEXT", "text": "a\x00"}},
         "overlay.text"),
        ("/api/recording/getAll", {"filter": {"recording_name": "a\x00"}}, "filter.recording_name"),
        ("/api/streams/getAll", {"filter": {"name": "\x00"}}, "filter.name"),
        ("/api/auth/login", {"username": "a\x00", "password": "p"}, "username"),
        ("/api/webhooks/create", {"url": "https://example.com/h", "description": "\x00"},
         "description"),
    ]:  # fmt: skip
        r = await client.post(path, json=sent, headers=HEADERS)
        # (a union's member may follow the field: "filter.name.constrained-str")
        assert shape(r, 400, "VALIDATION_ERROR")["field"].startswith(field), (path, r.text)
    count = await client.post("/api/recording/getCount", json={}, headers=HEADERS)
    assert count.json()["count"] == 0
