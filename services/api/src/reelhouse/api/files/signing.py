"""Signed, expiring download URLs for recorded files (docs/ARCHITECTURE.md §5).

``/api/recording/download/<file_id>?expires=<unix>&signature=<hex>`` where the signature is
HMAC-SHA256(secret, ``"<file_id>:<expires>"``). The signature is the only authority a download
needs (a player cannot send headers), so it covers the file id and the expiry together.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from reelhouse.api.settings import ApiSettings
from reelhouse.common.logging import get_logger

log = get_logger("reelhouse.api.downloads")

SECRET_FILE_NAME = "download-secret"  # noqa: S105 (a file name, not a secret)
"""The generated secret's file, next to the bootstrap token file."""


def secret_file(settings: ApiSettings) -> Path:
    return settings.bootstrap_token_file.parent / SECRET_FILE_NAME


def resolve_download_secret(settings: ApiSettings) -> str:
    """The configured secret, else the one kept next to the bootstrap token, else a new one."""
    if settings.download_secret is not None and settings.download_secret.get_secret_value():
        secret = settings.download_secret.get_secret_value()
        if len(secret) < 16:
            raise ValueError("REELHOUSE_DOWNLOAD_SECRET must be at least 16 characters")
        return secret
    path = secret_file(settings)
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    log.info("download_secret_generated", path=str(path))
    return secret


def sign(secret: str, file_id: str, expires: int) -> str:
    """Hex HMAC-SHA256 of ``"<file_id>:<expires>"``."""
    message = f"{file_id}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def download_url(secret: str, file_id: str, expires: int) -> str:
    """The path (with query) of a signed download of ``file_id`` valid until ``expires``."""
    signature = sign(secret, file_id, expires)
    return f"/api/recording/download/{file_id}?expires={expires}&signature={signature}"


def signature_valid(
    secret: str,
    file_id: str,
    expires: str | None,
    signature: str | None,
    *,
    now: float | None = None,
) -> bool:
    """True when ``signature`` signs ``file_id`` and ``expires``, and ``expires`` is ahead."""
    if not expires or not signature or not expires.isdigit() or len(expires) > 12:
        return False
    expected = sign(secret, file_id, int(expires))
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return False
    return int(expires) > (time.time() if now is None else now)
