"""Platform credentials (issue 22): the secret key file, sealing, and what streamlink gets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr, ValidationError

from reelhouse.common.credentials import (
    PlatformCredentials,
    refused_status,
    resolve_secret_key,
    seal,
    streamlink_auth,
    unseal,
)
from reelhouse.common.settings import CommonSettings


def test_a_generated_key_is_kept_0600_beside_the_jwt_secret_and_reused(tmp_path: Path) -> None:
    settings = CommonSettings(bootstrap_token_file=tmp_path / "keys" / "bootstrap-token")
    sealed = seal(resolve_secret_key(settings), PlatformCredentials(token="s3cret-token"))
    key_file = tmp_path / "keys" / "secret-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "s3cret-token" not in sealed
    assert unseal(resolve_secret_key(settings), sealed).token == "s3cret-token"  # same key
    other = CommonSettings(bootstrap_token_file=tmp_path / "other" / "bootstrap-token")
    with pytest.raises(ValueError, match="do not open"):
        unseal(resolve_secret_key(other), sealed)


def test_a_configured_key_or_passphrase_and_no_file(tmp_path: Path) -> None:
    token_file = tmp_path / "bootstrap-token"
    phrase = CommonSettings(bootstrap_token_file=token_file, secret_key=SecretStr("p" * 40))
    sealed = seal(resolve_secret_key(phrase), PlatformCredentials(cookies={"a": "b"}))
    assert unseal(resolve_secret_key(phrase), sealed).cookies == {"a": "b"}
    assert not (tmp_path / "secret-key").exists()
    with pytest.raises(ValueError, match="32 characters"):
        resolve_secret_key(CommonSettings(bootstrap_token_file=token_file,
                                          secret_key=SecretStr("short")))  # fmt: skip


def test_credentials_in_streamlink_terms() -> None:
    twitch = streamlink_auth("twitch", PlatformCredentials(token="oauth:abc"))
    assert twitch.plugin == {"api-header": [("Authorization", "OAuth abc")]}
    assert twitch.session == {}
    url = streamlink_auth("url", PlatformCredentials(token="t", cookies={"s": "1"}))
    assert url.session["http-headers"] == {"Authorization": "Bearer t"}
    assert url.session["http-cookies"] == {"s": "1"}
    with pytest.raises(ValidationError):
        PlatformCredentials()
    with pytest.raises(ValidationError):
        PlatformCredentials(headers={"X-A": "line\nbreak"})


def test_a_refusal_is_found_in_the_cause_chain() -> None:
    response = requests.Response()
    response.status_code = 401
    outer = RuntimeError("Unable to open URL")
    outer.__cause__ = requests.HTTPError("Unauthorized", response=response)
    assert refused_status(outer) == 401
    assert refused_status(RuntimeError("404 Client Error: Not Found")) is None
