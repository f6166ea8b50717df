"""Signed download URLs and the generated download secret."""

from __future__ import annotations

import stat

import pytest
from pydantic import SecretStr

from reelhouse.api.files.signing import (
    download_url,
    resolve_download_secret,
    sign,
    signature_valid,
)
from reelhouse.api.settings import ApiSettings

FILE_ID = "0123456789abcdef01234567"
SECRET = "s" * 32


def test_signature_covers_file_id_and_expiry_and_expires():
    sig = sign(SECRET, FILE_ID, 2000)
    assert len(sig) == 64
    assert signature_valid(SECRET, FILE_ID, "2000", sig, now=1999)
    assert not signature_valid(SECRET, FILE_ID, "2000", sig, now=2000)  # expired
    assert not signature_valid(SECRET, FILE_ID, "2001", sig, now=1999)
    assert not signature_valid(SECRET, "f" * 24, "2000", sig, now=1999)
    assert not signature_valid("t" * 32, FILE_ID, "2000", sig, now=1999)
    for expires, signature in [(None, sig), ("2000", None), ("-5", sig), ("2e3", sig), ("", "")]:
        assert not signature_valid(SECRET, FILE_ID, expires, signature, now=0)
    assert download_url(SECRET, FILE_ID, 2000) == (
        f"/api/recording/download/{FILE_ID}?expires=2000&signature={sig}"
    )


def test_secret_is_generated_once_next_to_the_bootstrap_token(tmp_path):
    settings = ApiSettings(bootstrap_token_file=tmp_path / "keys" / "bootstrap-token")
    first = resolve_download_secret(settings)
    path = tmp_path / "keys" / "download-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert resolve_download_secret(settings) == first


def test_configured_secret_wins_and_must_be_long_enough(tmp_path):
    token_file = tmp_path / "bootstrap-token"
    configured = ApiSettings(bootstrap_token_file=token_file, download_secret=SecretStr(SECRET))
    assert resolve_download_secret(configured) == SECRET
    assert not (tmp_path / "download-secret").exists()
    short = ApiSettings(bootstrap_token_file=token_file, download_secret=SecretStr("short"))
    with pytest.raises(ValueError, match="16 characters"):
        resolve_download_secret(short)
