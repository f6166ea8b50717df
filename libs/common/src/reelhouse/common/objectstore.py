"""S3-compatible object storage (issue 24): storage targets, their sealed credentials, a boto3
client per target, the ``test`` check, object keys, presigned URLs, copies and deletes.

boto3 signs and speaks S3; nothing here signs a request itself. Every call here is blocking
(boto3 is): async callers run them with ``asyncio.to_thread``. Errors are reduced to a
:data:`~reelhouse.common.contracts.storage_targets.TestFailure` class with :func:`classify`, so
no remote error text reaches an API answer, an event or a record.

A target document (collection ``storage_targets``) holds the plain fields of
:class:`~reelhouse.common.contracts.storage_targets.StorageTargetIn` and ``credentials``: the
access key id and secret as one Fernet token under the deployment's secret key (the key of
:mod:`reelhouse.common.credentials`, ``REELHOUSE_SECRET_KEY``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from cryptography.fernet import Fernet, InvalidToken

from reelhouse.common.mongo import Collections

STORAGE_TARGETS = Collections.STORAGE_TARGETS
"""The collection of storage targets (one document per target, scoped by ``tenant``)."""


def seal_keys(fernet: Fernet, access_key_id: str, secret_access_key: str) -> str:
    """The two keys as one Fernet token (URL-safe text)."""
    payload = {"access_key_id": access_key_id, "secret_access_key": secret_access_key}
    return fernet.encrypt(json.dumps(payload).encode()).decode()


def unseal_keys(fernet: Fernet, sealed: str) -> tuple[str, str]:
    """(access key id, secret); ``ValueError`` when the key does not open them."""
    try:
        data = json.loads(fernet.decrypt(sealed.encode()))
    except (InvalidToken, ValueError):
        raise ValueError("the stored credentials do not open with this secret key") from None
    return str(data["access_key_id"]), str(data["secret_access_key"])


@dataclass(frozen=True)
class Target:
    """One storage target, credentials opened: what a client is made from."""

    id: str
    provider: str
    endpoint_url: str
    region: str
    bucket: str
    prefix: str
    path_style: bool
    storage_class: str | None
    access_key_id: str
    secret_access_key: str

    @classmethod
    def of(cls, doc: dict[str, Any], fernet: Fernet) -> Target:
        key_id, secret = unseal_keys(fernet, str(doc.get("credentials", "")))
        return cls(
            id=str(doc["_id"]),
            provider=str(doc.get("provider", "other")),
            endpoint_url=str(doc["endpoint_url"]).rstrip("/"),
            region=str(doc.get("region") or "us-east-1"),
            bucket=str(doc["bucket"]),
            prefix=str(doc.get("prefix") or "").strip("/"),
            path_style=bool(doc.get("path_style")),
            storage_class=doc.get("storage_class"),
            access_key_id=key_id,
            secret_access_key=secret,
        )

    def key(self, job_id: str, file_name: str) -> str:
        """The object key of a job's file: ``<prefix>/<job_id>/<file name>``."""
        return "/".join(p for p in (self.prefix, job_id, file_name) if p)

    def same_account(self, other: Target) -> bool:
        """Whether a server-side copy between the two is possible (one endpoint, one key)."""
        return (self.endpoint_url, self.access_key_id) == (other.endpoint_url, other.access_key_id)


def client(target: Target, *, timeout_s: float = 10.0, attempts: int = 2) -> Any:
    """A boto3 S3 client of ``target`` (its own session: clients are thread-safe, sessions not)."""
    config = Config(
        region_name=target.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if target.path_style else "virtual"},
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": attempts, "mode": "standard"},
        # Checksums only when an operation needs them (AWS's default since boto3 1.36 sends
        # CRC32 trailers, which several S3-compatible servers refuse).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=target.endpoint_url,
        aws_access_key_id=target.access_key_id,
        aws_secret_access_key=target.secret_access_key,
        config=config,
    )


_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed",
    "InvalidToken", "ExpiredToken", "InvalidSecurity", "AuthFailure",
}  # fmt: skip
_NO_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound", "InvalidBucketName"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


def classify(exc: BaseException) -> str:
    """The failure class of an S3 call: ``auth``, ``no_bucket``, ``denied``, ``unreachable``,
    ``timeout`` or ``error`` (never the remote text)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _AUTH_CODES:
            return "auth"
        if code in _NO_BUCKET_CODES:
            return "no_bucket"
        if code in _DENIED_CODES:
            return "denied"
        return "error"
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return "unreachable"
    if isinstance(exc, BotoCoreError | OSError):
        return "unreachable"
    return "error"


def probe(target: Target, *, timeout_s: float = 5.0) -> str | None:
    """``test``: the bucket is reachable and writable (a small object written and removed).
    None when it is, else the failure class."""
    s3 = client(target, timeout_s=timeout_s, attempts=1)
    try:
        s3.head_bucket(Bucket=target.bucket)
        key = "/".join(p for p in (target.prefix, f".reelhouse-test-{uuid.uuid4().hex}") if p)
        s3.put_object(Bucket=target.bucket, Key=key, Body=b"reelhouse storage test\n")
        s3.delete_object(Bucket=target.bucket, Key=key)
    except Exception as exc:
        failure = classify(exc)
        # head_bucket answers a bare 403 for a bad secret as for a refused one: a signed call
        # that can say which (list_objects) decides.
        if failure == "denied":
            try:
                s3.list_objects_v2(Bucket=target.bucket, MaxKeys=1)
            except Exception as again:
                failure = classify(again)
        return failure
    return None


def presign_get(target: Target, key: str, *, expires_s: int, file_name: str | None = None) -> str:
    """A presigned GET of ``key`` valid for ``expires_s`` seconds (Range requests work on it)."""
    params: dict[str, Any] = {"Bucket": target.bucket, "Key": key}
    if file_name:
        params["ResponseContentDisposition"] = f'attachment; filename="{file_name}"'
    return str(
        client(target).generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
    )


def head(target: Target, key: str) -> dict[str, Any] | None:
    """The object's head (``ContentLength``, ``ETag``, ``StorageClass``...), None if absent."""
    try:
        return dict(client(target).head_object(Bucket=target.bucket, Key=key))
    except ClientError as exc:
        if classify(exc) == "no_bucket":
            return None
        raise


def delete(target: Target, key: str, *, upload_id: str | None = None) -> None:
    """Delete an object (absent is fine) and abort an unfinished multipart upload of it."""
    s3 = client(target)
    if upload_id:
        try:
            s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) != "NoSuchUpload":
                raise
    s3.delete_object(Bucket=target.bucket, Key=key)


def copy(
    source: Target, key: str, dest: Target, dest_key: str, *, storage_class: str | None
) -> dict[str, Any]:
    """Copy an object to ``dest`` (server-side when both are one account, else streamed
    through this process); returns the copy's head."""
    s3 = client(dest, timeout_s=60)
    extra: dict[str, Any] = {}
    if storage_class:
        extra["StorageClass"] = storage_class
    if source.same_account(dest):
        # boto3's managed copy: CopyObject, or UploadPartCopy parts past 8 MiB (server-side).
        s3.copy({"Bucket": source.bucket, "Key": key}, dest.bucket, dest_key, ExtraArgs=extra)
    else:
        body = client(source, timeout_s=60).get_object(Bucket=source.bucket, Key=key)["Body"]
        s3.upload_fileobj(body, dest.bucket, dest_key, ExtraArgs=extra)
    found = head(dest, dest_key)
    if found is None:
        raise RuntimeError("the copy is not in the destination bucket")
    return found
