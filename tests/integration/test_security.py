"""Who may do what (issue 7): roles on every write endpoint, tenants, JWTs, keys, refresh tokens.

Each test runs the real API in-process on this test's database and NATS; accounts are made
through the API with the bootstrap token (the default tenant's first admin).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import nats
import pytest
from bson import ObjectId
from support.auth import Caller, make_key, make_user, stored_user
from support.seeds import recording_payload, restream_payload, seed_payloads
from support.services import api_client, settings_from_env
from support.stack import HEADERS, TOKEN
from support.wait import eventually

from reelhouse.api.accounts.principal import AuthPrincipal, issue_access_token
from reelhouse.api.settings import ApiSettings
from reelhouse.common.contracts.messages import JobStats, ProcessData
from reelhouse.common.mongo import Collections
from reelhouse.common.subjects import Subjects

MISSING = "66004d2997300f9385d32b00"

OPERATOR_WRITES = [
    ("POST", "/api/recording/create"),
    ("POST", "/api/recording/update"),
    ("POST", "/api/recording/start"),
    ("POST", "/api/recording/stop"),
    ("POST", "/api/recording/pause"),
    ("POST", "/api/recording/resume"),
    ("DELETE", "/api/recording/remove"),
    ("POST", "/api/recording/removeFile"),
    ("POST", "/api/recording/archiveFile"),
    ("POST", "/api/recording/reprocessFile"),
    ("POST", "/api/restream/create"),
    ("POST", "/api/restream/update"),
    ("POST", "/api/restream/start"),
    ("POST", "/api/restream/stop"),
    ("DELETE", "/api/restream/remove"),
    ("POST", "/api/streams/create"),
    ("POST", "/api/streams/update"),
    ("POST", "/api/streams/setStreamInfo"),
    ("DELETE", "/api/streams/remove"),
    ("POST", "/api/streams/start"),
    ("POST", "/api/streams/stop"),
    ("POST", "/api/storage/cleanup"),
    ("POST", "/api/storage-targets/create"),
    ("POST", "/api/storage-targets/update"),
    ("POST", "/api/storage-targets/remove"),
    ("POST", "/api/storage-targets/test"),
]
"""Every write of jobs, streams and files: operator and admin."""

ADMIN_ONLY = [
    ("POST", "/api/users/create"),
    ("POST", "/api/users/getAll"),
    ("POST", "/api/users/update"),
    ("DELETE", "/api/users/remove"),
    ("POST", "/api/keys/create"),
    ("POST", "/api/keys/getAll"),
    ("DELETE", "/api/keys/remove"),
]

READS = [
    "/api/recording/getAll",
    "/api/recording/getCount",
    "/api/recording/getStat",
    "/api/recording/getFiles",
    "/api/restream/getAll",
    "/api/restream/getStat",
    "/api/streams/getAll",
    "/api/storage/getInfo",
    "/api/storage-targets/getAll",
    "/api/nodes/getAll",
]

ROLES = ("viewer", "operator", "admin")


@pytest.fixture
async def client(settings_env, tmp_path):
    env = {**settings_env, "REELHOUSE_ARCHIVE_ROOT": str(tmp_path / "archive")}
    settings = settings_from_env(ApiSettings, env, bootstrap_token=TOKEN, rate_limit_enabled=False)
    async with api_client(settings) as c:
        yield c


def error_code(r: Any) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


async def callers(client: Any, role: str) -> list[Caller]:
    """A user (JWT, once in ``x-access-token`` once as Bearer) and an API key of ``role``."""
    return [
        await make_user(client, role),
        await make_user(client, role, bearer=True),
        await make_key(client, role),
    ]


@pytest.mark.parametrize("role", ROLES)
async def test_role_matrix_on_every_write_endpoint(client, role):
    """Too low a role is 403 FORBIDDEN before anything else; enough passes the role check
    (and meets the ordinary 400/404 of a body naming nothing)."""
    failures = []
    for caller in await callers(client, role):
        for method, path in OPERATOR_WRITES + ADMIN_ONLY:
            needed = "admin" if (method, path) in ADMIN_ONLY else "operator"
            allowed = ROLES.index(role) >= ROLES.index(needed)
            body = {"id": MISSING, "file_id": MISSING, "record_id": MISSING}
            r = await client.request(method, path, json=body, headers=caller.headers)
            got = (r.status_code, error_code(r))
            if allowed and r.status_code in (401, 403):
                failures.append(f"{caller.kind} {role} {path}: {got} {r.text[:120]}")
            if not allowed and got != (403, "FORBIDDEN"):
                failures.append(f"{caller.kind} {role} {path}: {got}, expected 403")
        for path in READS:
            r = await client.post(path, json={}, headers=caller.headers)
            if r.status_code != 200:
                failures.append(f"{caller.kind} {role} read {path}: {r.status_code} {r.text[:120]}")
    assert not failures, "\n".join(failures)


async def test_viewer_cannot_create_and_operator_can(client):
    viewer, operator = await make_user(client, "viewer"), await make_key(client, "operator")
    body = recording_payload(0, active=False)
    r = await client.post("/api/recording/create", json=body, headers=viewer.headers)
    assert r.status_code == 403
    assert "operator" in r.json()["error"]["message"]
    r = await client.post("/api/recording/create", json=body, headers=operator.headers)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    r = await client.post("/api/recording/getById", json={"id": job_id}, headers=viewer.headers)
    assert r.status_code == 200
    r = await client.post("/api/recording/stop", json={"id": job_id}, headers=viewer.headers)
    assert r.status_code == 403
    r = await client.request(
        "DELETE", "/api/recording/remove", json={"id": job_id}, headers=operator.headers
    )
    assert r.status_code == 200


TARGET = {
    "storage_name": "archive",
    "provider": "other",
    "endpoint_url": "http://127.0.0.1:9",
    "region": "us-east-1",
    "bucket": "media",
    "path_style": True,
    "access_key_id": "AKIDEXAMPLE0001",
    "secret_access_key": "secret-of-the-default-tenant",
}
"""A storage target (issue 24); nothing listens on its endpoint: no test here reaches it."""


async def test_viewer_reads_storage_targets_but_cannot_write_or_test_them(client):
    viewer, operator = await make_user(client, "viewer"), await make_key(client, "operator")
    target = await ok(client, "/api/storage-targets/create", TARGET, operator.headers)
    ref = {"id": target["id"]}
    assert [t["id"] for t in await ok(client, "/api/storage-targets/getAll", {}, viewer.headers)
            ] == [target["id"]]  # fmt: skip
    seen = await ok(client, "/api/storage-targets/getById", ref, viewer.headers)
    assert seen == target
    assert TARGET["secret_access_key"] not in str(seen)
    for verb, body in (("create", TARGET), ("update", {**TARGET, **ref, "bucket": "other"}),
                       ("remove", ref), ("test", ref)):  # fmt: skip
        r = await client.post(f"/api/storage-targets/{verb}", json=body, headers=viewer.headers)
        assert (r.status_code, error_code(r)) == (403, "FORBIDDEN"), (verb, r.text)
    assert await ok(client, "/api/storage-targets/getAll", {}, operator.headers) == [target]


async def test_an_operator_key_cannot_manage_keys_or_mint_an_admin_key(client):
    admin = await make_user(client, "admin")
    r = await client.post(
        "/api/keys/create", json={"name": "x", "role": "admin"}, headers=admin.headers
    )
    assert r.status_code == 200
    operator = await make_key(client, "operator")
    r = await client.post(
        "/api/keys/create", json={"name": "x", "role": "admin"}, headers=operator.headers
    )
    assert (r.status_code, error_code(r)) == (403, "FORBIDDEN")


async def test_other_tenants_objects_are_404_or_filtered(client, db, tmp_path):
    """Tenant ``acme`` never sees, changes, counts, streams or downloads ``default``'s things."""
    recording = await ok(client, "/api/recording/create", recording_payload(0, active=False))
    restream = await ok(client, "/api/restream/create", restream_payload(0, active=False))
    stream_body = seed_payloads("streams-api.txt", "/api/streams/create")[0]
    stream = await ok(client, "/api/streams/create", stream_body)
    target = await ok(client, "/api/storage-targets/create", TARGET)
    storage = tmp_path / "recordings" / recording["id"]
    storage.mkdir(parents=True)
    (storage / "a.mp4").write_bytes(b"0123456789")
    file_doc = {
        "tenant": "default", "file_name": "a.mp4", "file_path": str(storage / "a.mp4"),
        "entity_id": recording["id"], "status": "ready", "size_bytes": 10, "duration_ms": 1000,
        "output_format": "mp4", "created": ObjectId().generation_time,
        "modified": ObjectId().generation_time,
    }  # fmt: skip
    file_id = str((await db[Collections.FILES].insert_one(file_doc)).inserted_id)
    ref = {"record_id": recording["id"], "file_id": file_id}
    url = (await ok(client, "/api/recording/getDownloadUrl", ref))["url"]

    for acme in (await make_user(client, "admin", "acme"), await make_key(
        client, "admin", (await make_user(client, "admin", "acme")).headers, "acme"
    )):  # fmt: skip
        h = acme.headers
        failures = []

        async def expect(
            method: str, path: str, body: Any, status: int, h=h, failures=failures, who=acme.kind
        ):
            r = await client.request(method, path, json=body, headers=h)
            if r.status_code != status or (status == 404 and error_code(r) != "NOT_FOUND"):
                failures.append(f"{who} {path}: {r.status_code} {r.text[:150]}")
            return r

        rid, sid, tid = recording["id"], restream["id"], stream["id"]
        for module, job in (("recording", rid), ("restream", sid), ("streams", tid)):
            for verb in ("getById", "start", "stop"):
                await expect("POST", f"/api/{module}/{verb}", {"id": job}, 404)
            await expect("DELETE", f"/api/{module}/remove", {"id": job}, 404)
        await expect("POST", "/api/recording/update", {"id": rid, **recording_payload(0)}, 404)
        await expect("POST", "/api/recording/pause", {"id": rid}, 404)
        await expect("POST", "/api/recording/removeFile", {"record_id": rid, "file_id": file_id},
                     404)  # fmt: skip
        for verb in ("getDownloadUrl", "archiveFile", "reprocessFile"):
            await expect("POST", f"/api/recording/{verb}", ref, 404)
        for module in ("recording", "restream", "streams"):
            r = await expect("POST", f"/api/{module}/getAll", {}, 200)
            assert r.json() == [], r.text
            r = await expect("POST", f"/api/{module}/getCount", {}, 200)
            assert r.json()["count"] == 0
        r = await expect("POST", "/api/recording/getFiles", {}, 200)
        assert file_id not in r.text
        r = await expect("POST", "/api/storage/getInfo", {}, 200)
        assert rid not in r.text
        r = await expect("POST", "/api/storage-targets/getAll", {}, 200)
        assert r.json() == [], r.text
        for verb in ("getById", "remove", "test"):
            await expect("POST", f"/api/storage-targets/{verb}", {"id": target["id"]}, 404)
        await expect("POST", "/api/storage-targets/update", {**TARGET, "id": target["id"]}, 404)
        # media a player fetches, with the other tenant's token in the query
        token = h.get("x-access-token") or ""
        for path in (
            f"/api/restream/hls/{sid}/index.m3u8?token={token}",
            f"/api/recording/thumbnail?id={rid}&token={token}",
            f"/api/recording/play/{file_id}/a.mp4?token={token}",
            f"{url}&token={token}",
        ):
            r = await client.get(path)
            if r.status_code != 404:
                failures.append(f"{acme.kind} GET {path.split('?')[0]}: {r.status_code}")
        r = await client.post("/api/users/getAll", json={}, headers=h)
        assert {u["tenant"] for u in r.json()} == {"acme"}
        r = await client.post("/api/keys/getAll", json={}, headers=h)
        assert all(k["id"] != acme.id or acme.kind == "key" for k in r.json())
        assert not failures, "\n".join(failures)

    # the signed URL alone still works, and default's own objects are intact
    r = await client.get(url)
    assert r.status_code == 200
    assert r.content == b"0123456789"
    await ok(client, "/api/recording/getById", {"id": recording["id"]})
    await ok(client, "/api/streams/getById", {"id": stream["id"]})
    assert await ok(client, "/api/storage-targets/getById", {"id": target["id"]}) == target


async def test_getstat_shows_only_the_callers_tenant(client, service_env):
    acme = await make_user(client, "viewer", "acme")
    subjects = Subjects(service_env["REELHOUSE_SUBJECT_PREFIX"])
    nc = await nats.connect(service_env["REELHOUSE_NATS_URL"])
    ours, theirs = str(ObjectId()), str(ObjectId())

    def stats(job_id: str, tenant: str) -> JobStats:
        data = ProcessData(id=job_id, bitrate_kbits=1000, fps="25.0", frame="1")
        return JobStats(module="recording", job_id=job_id, tenant=tenant, node="rec-x",
                        state="running", processData=data)  # fmt: skip

    async def both_published() -> list[Any] | None:
        for message in (stats(ours, "default"), stats(theirs, "acme")):
            key = subjects.live_progress("recording", message.job_id)  # as a worker writes it
            await nc.publish(subjects.live_key_subject(key), message.model_dump_json().encode())
        await nc.flush()
        rows = (await client.post("/api/recording/getStat", json={}, headers=HEADERS)).json()
        return rows if rows else None

    try:
        rows = await eventually(both_published, timeout=10, what="stats", interval=0.2)
    finally:
        await nc.close()
    assert [row["processData"]["id"] for row in rows] == [ours]
    r = await client.post("/api/recording/getStat", json={}, headers=acme.headers)
    assert [row["processData"]["id"] for row in r.json()] == [theirs]


async def ok(client: Any, path: str, body: Any, headers: dict[str, str] = HEADERS) -> Any:
    r = await client.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


# ---- credentials ---------------------------------------------------------------------------


async def test_login_refresh_logout(client):
    viewer = await make_user(client, "viewer")
    r = await client.post("/api/users/getAll", json={}, headers=HEADERS)
    username = next(u["username"] for u in r.json() if u["id"] == viewer.id)
    creds = {"username": username, "password": "correct horse battery"}
    r = await client.post("/api/auth/login", json={**creds, "password": "wrong password"})
    assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED")
    r = await client.post("/api/auth/login", json={**creds, "username": "nobody"})
    assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED")
    pair = await ok(client, "/api/auth/login", creds, {})
    assert pair["token_type"] == "bearer"
    assert pair["user"]["role"] == "viewer"
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["tid"] == "default"
    assert claims["exp"] - claims["iat"] == 900

    renewed = await ok(client, "/api/auth/refresh", {"refresh_token": pair["refresh_token"]}, {})
    assert renewed["refresh_token"] != pair["refresh_token"]
    headers = {"x-access-token": renewed["access_token"]}
    assert (await client.post("/api/recording/getAll", json={}, headers=headers)).status_code == 200
    # (a used refresh token presented again: test_security_sessions.py, reuse detection)

    await ok(client, "/api/auth/logout", {"refresh_token": renewed["refresh_token"]}, {})
    r = await client.post("/api/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED")
    r = await client.post("/api/recording/getAll", json={}, headers=headers)
    assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED")  # logout ends access tokens


async def test_passwords_and_keys_are_stored_hashed(client, db):
    admin = await make_user(client, "admin")
    key = await make_key(client, "viewer")
    user = await db["users"].find_one({"_id": ObjectId(admin.id)})
    assert user["password_hash"].startswith("$argon2id$")
    assert "correct horse battery" not in str(user)
    stored = await db["api_keys"].find_one({"_id": ObjectId(key.id)})
    assert key.headers["x-access-token"] not in str(stored)
    listed = await ok(client, "/api/keys/getAll", {})
    assert key.headers["x-access-token"] not in str(listed)
    assert [k["prefix"] for k in listed if k["id"] == key.id] == [
        key.headers["x-access-token"][:10]
    ]


async def test_expired_and_forged_jwts_are_401(client, db):
    secret = client.app.state.jwt_secret
    admin = await stored_user(db, "admin")
    good = issue_access_token(secret, admin, 60, version=0)
    assert (await client.post("/api/users/getAll", json={}, headers={"x-access-token": good})
            ).status_code == 200  # fmt: skip
    now = int(time.time())
    claims = {"sub": admin.id, "tid": "default", "role": "admin", "typ": "access", "ver": 0,
              "iat": now - 120, "exp": now - 60}  # fmt: skip
    nobody = AuthPrincipal(id=str(ObjectId()), tenant="default", role="admin", kind="user")
    forged = {
        "expired": jwt.encode(claims, secret, algorithm="HS256"),
        "other key": jwt.encode({**claims, "exp": now + 60}, "x" * 48, algorithm="HS256"),
        "alg none": jwt.encode({**claims, "exp": now + 60}, None, algorithm="none"),
        "tampered role": _tamper(issue_access_token(secret, admin.__class__(
            id=admin.id, tenant="default", role="viewer", kind="user"), 60, version=0),
            role="admin"),
        "no version": jwt.encode({k: v for k, v in claims.items() if k != "ver"} | {
            "exp": now + 60}, secret, algorithm="HS256"),
        "old version": jwt.encode({**claims, "exp": now + 60, "ver": -1}, secret,
                                  algorithm="HS256"),
        "no such user": issue_access_token(secret, nobody, 60, version=0),
        "other tenant": jwt.encode({**claims, "exp": now + 60, "tid": "acme"}, secret,
                                   algorithm="HS256"),
        "other role": jwt.encode({**claims, "exp": now + 60, "role": "viewer"}, secret,
                                 algorithm="HS256"),
        "no tenant": jwt.encode({k: v for k, v in claims.items() if k != "tid"} | {
            "exp": now + 60}, secret, algorithm="HS256"),
        "refresh type": jwt.encode({**claims, "exp": now + 60, "typ": "refresh"}, secret,
                                   algorithm="HS256"),
        "garbage": "a.b.c",
    }  # fmt: skip
    for name, token in forged.items():
        r = await client.post("/api/users/getAll", json={}, headers={"x-access-token": token})
        assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED"), name
        r = await client.post(
            "/api/users/getAll", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401, name
    r = await client.post(
        "/api/users/getAll", json={}, headers={"x-access-token": forged["expired"]}
    )
    assert "expired" in r.json()["error"]["message"]


def _tamper(token: str, **changes: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    import base64
    import json

    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


async def test_removed_keys_and_users_stop_working(client):
    key = await make_key(client, "operator")
    assert (await client.post("/api/recording/getAll", json={}, headers=key.headers)
            ).status_code == 200  # fmt: skip
    r = await client.request("DELETE", "/api/keys/remove", json={"id": key.id}, headers=HEADERS)
    assert r.status_code == 200
    r = await client.post("/api/recording/getAll", json={}, headers=key.headers)
    assert (r.status_code, error_code(r)) == (401, "UNAUTHORIZED")
    assert "revoked" in r.json()["error"]["message"]
    r = await client.request("DELETE", "/api/keys/remove", json={"id": key.id}, headers=HEADERS)
    assert r.status_code == 404
    r = await client.post("/api/recording/getAll", json={}, headers={"x-access-token": "rhk_x"})
    assert r.status_code == 401

    user = await make_user(client, "viewer")
    r = await client.request("DELETE", "/api/users/remove", json={"id": user.id}, headers=HEADERS)
    assert r.status_code == 200
    assert (await client.post("/api/users/getAll", json={}, headers=HEADERS)).json() == []


async def test_user_admin(client):
    r = await client.post("/api/users/create", json={"username": "ann", "password": "short"},
                          headers=HEADERS)  # fmt: skip
    assert (r.status_code, error_code(r)) == (400, "VALIDATION_ERROR")
    assert r.json()["error"]["field"] == "password"
    ann = {"username": "ann", "password": "long enough", "role": "viewer"}
    created = await ok(client, "/api/users/create", ann)
    r = await client.post("/api/users/create", json={"username": "ann", "password": "long enough"},
                          headers=HEADERS)  # fmt: skip
    assert (r.status_code, error_code(r)) == (409, "CONFLICT")
    updated = await ok(client, "/api/users/update", {"id": created["id"], "role": "operator"})
    assert updated["role"] == "operator"
    pair = await ok(client, "/api/auth/login", {"username": "ann", "password": "long enough"}, {})
    assert pair["user"]["role"] == "operator"
    # an admin of another tenant cannot see, change or remove ann; nor create in "default"
    acme = await make_user(client, "admin", "acme")
    r = await client.post("/api/users/update", json={"id": created["id"], "role": "admin"},
                          headers=acme.headers)  # fmt: skip
    assert (r.status_code, error_code(r)) == (404, "NOT_FOUND")
    r = await client.request("DELETE", "/api/users/remove", json={"id": created["id"]},
                             headers=acme.headers)  # fmt: skip
    assert r.status_code == 404
    eve = {"username": "eve", "password": "long enough", "tenant": "default"}
    r = await client.post("/api/users/create", json=eve, headers=acme.headers)
    assert (r.status_code, error_code(r)) == (403, "FORBIDDEN")
    body = {"username": "acme-op", "password": "long enough", "role": "operator"}
    made = await ok(client, "/api/users/create", body, acme.headers)
    assert made["tenant"] == "acme"


async def test_bootstrap_token_is_the_default_tenants_admin(client):
    for headers in (HEADERS, {"Authorization": f"Bearer {TOKEN}"}):
        r = await client.post("/api/keys/create", json={"name": "ci"}, headers=headers)
        assert r.status_code == 200
        assert r.json()["key"].startswith("rhk_")
    r = await client.post("/api/keys/getAll", json={}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
