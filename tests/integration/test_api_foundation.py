"""API skeleton: token auth, the error shape everywhere, and /api/health following its deps."""

from __future__ import annotations

import pytest
from support import infra as local
from support.services import api_client, settings_from_env
from support.wait import eventually

from reelhouse.api.settings import ApiSettings

TOKEN = "test-bootstrap-token-0123456789"


def assert_error_shape(body: dict, code: str) -> dict:
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
async def client(settings_env):
    settings = settings_from_env(ApiSettings, settings_env, bootstrap_token=TOKEN)
    async with api_client(settings) as c:
        yield c


async def test_request_without_token_is_401_in_error_shape(client):
    r = await client.post("/api/nodes/getAll", json={})
    assert r.status_code == 401
    assert "x-access-token" in assert_error_shape(r.json(), "UNAUTHORIZED")["message"]


async def test_wrong_token_is_401(client):
    r = await client.post("/api/nodes/getAll", json={}, headers={"x-access-token": "nope"})
    assert r.status_code == 401
    assert_error_shape(r.json(), "UNAUTHORIZED")


async def test_bootstrap_token_passes_and_lists_the_api_node(client):
    headers = {"x-access-token": TOKEN}

    async def api_node():
        r = await client.post("/api/nodes/getAll", json={"service": "api"}, headers=headers)
        assert r.status_code == 200
        return r.json()

    nodes = await eventually(api_node, timeout=10, what="the API's own node row")
    assert len(nodes) == 1
    assert nodes[0]["service"] == "api"
    assert nodes[0]["alive"] is True
    assert nodes[0]["last_seen"].endswith("Z")


async def test_generated_bootstrap_token_is_written_once_and_accepted(settings_env, tmp_path):
    settings = settings_from_env(ApiSettings, settings_env)
    assert settings.bootstrap_token is None
    async with api_client(settings) as c:
        token_file = settings.bootstrap_token_file
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert token_file.stat().st_mode & 0o077 == 0
        r = await c.post("/api/nodes/getAll", headers={"x-access-token": token})
        assert r.status_code == 200
    async with api_client(settings) as c:  # a restart keeps the same token
        assert token_file.read_text().strip() == token
        r = await c.post("/api/nodes/getAll", headers={"x-access-token": token})
        assert r.status_code == 200


async def test_unknown_route_and_wrong_method_use_the_error_shape(client):
    r = await client.post("/api/nothing/here", json={})
    assert r.status_code == 404
    assert "/api/nothing/here" in assert_error_shape(r.json(), "NOT_FOUND")["message"]
    r = await client.delete("/api/health")
    assert r.status_code == 405
    assert_error_shape(r.json(), "METHOD_NOT_ALLOWED")


async def test_bad_json_is_a_validation_error(client):
    r = await client.post(
        "/api/nodes/getAll",
        content=b'{"service": ',
        headers={"x-access-token": TOKEN, "content-type": "application/json"},
    )
    assert r.status_code == 400
    error = assert_error_shape(r.json(), "VALIDATION_ERROR")
    assert error["field"] == "body"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"service": "toaster"}, "service"), ({"alive": "maybe"}, "alive"), ({"bogus": 1}, "bogus")],
)
async def test_invalid_fields_are_named(client, body, field):
    r = await client.post("/api/nodes/getAll", json=body, headers={"x-access-token": TOKEN})
    assert r.status_code == 400
    error = assert_error_shape(r.json(), "VALIDATION_ERROR")
    assert error["field"] == field
    assert error["details"][0]["field"] == field


async def test_health_is_green_with_versions(client):
    r = await eventually(lambda: _health_ok(client), timeout=15, what="all health checks green")
    checks = r.json()["checks"]
    assert set(checks) == {"nats", "mongo", "ffmpeg", "ffprobe", "storage"}
    assert checks["ffmpeg"]["version"].startswith("5.")
    assert checks["ffprobe"]["version"].startswith("5.")
    assert checks["nats"]["version"].count(".") == 2
    assert checks["storage"]["free_bytes"] > 0


async def _health_ok(client):
    r = await client.get("/api/health")
    return r if r.status_code == 200 else None


async def _health_down(client, name):
    r = await client.get("/api/health")
    if r.status_code == 503 and name in r.json()["error"].get("down", []):
        return r
    return None


async def test_health_follows_nats_down_and_back(settings_env, tmp_path):
    nats = local.nats_server(tmp_path / "own-nats")
    nats.start()
    env = {**settings_env, "REELHOUSE_NATS_URL": f"nats://127.0.0.1:{nats.port}"}
    settings = settings_from_env(ApiSettings, env, bootstrap_token=TOKEN)
    try:
        async with api_client(settings) as client:
            await eventually(lambda: _health_ok(client), timeout=15, what="health 200")
            nats.stop()
            r = await eventually(
                lambda: _health_down(client, "nats"), timeout=15, what="health 503 naming nats"
            )
            body = r.json()
            assert_error_shape(body, "UNAVAILABLE")
            assert body["error"]["down"] == ["nats"]
            assert body["checks"]["nats"]["status"] == "down"
            assert body["checks"]["mongo"]["status"] == "up"
            assert r.headers["retry-after"]
            nats.start()
            r = await eventually(lambda: _health_ok(client), timeout=20, what="health 200 again")
            assert r.json()["checks"]["nats"]["status"] == "up"
    finally:
        nats.stop()


async def test_health_follows_database_down_and_back(settings_env, tmp_path):
    ferret = local.ferretdb(tmp_path / "own-db")
    ferret.start()
    env = {**settings_env, "REELHOUSE_MONGODB_URL": f"mongodb://127.0.0.1:{ferret.port}/",
           "REELHOUSE_MONGODB_TIMEOUT_MS": "1000"}  # fmt: skip
    settings = settings_from_env(ApiSettings, env, bootstrap_token=TOKEN)
    try:
        async with api_client(settings) as client:
            await eventually(lambda: _health_ok(client), timeout=15, what="health 200")
            ferret.stop()
            r = await eventually(
                lambda: _health_down(client, "mongo"), timeout=15, what="health 503 naming mongo"
            )
            assert r.json()["error"]["down"] == ["mongo"]
            # Endpoints that need the database answer 503 in the error shape, not 500 or a hang.
            r = await client.post("/api/recording/getAll", headers={"x-access-token": TOKEN})
            assert r.status_code == 503
            assert_error_shape(r.json(), "UNAVAILABLE")
            # The fleet view is the live plane's: it answers without the database.
            r = await client.post("/api/nodes/getAll", headers={"x-access-token": TOKEN})
            assert r.status_code == 200, r.text
            assert [n["service"] for n in r.json() if n["alive"]] == ["api"]
            ferret.start()
            await eventually(lambda: _health_ok(client), timeout=20, what="health 200 again")
    finally:
        ferret.stop()


async def test_health_names_an_unusable_storage_root(settings_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**settings_env, "REELHOUSE_STORAGE_ROOT": str(blocker / "recordings")}
    settings = settings_from_env(ApiSettings, env, bootstrap_token=TOKEN)
    async with api_client(settings) as client:
        r = await eventually(
            lambda: _health_down(client, "storage"), timeout=15, what="storage named"
        )
        assert r.json()["checks"]["storage"]["status"] == "down"
