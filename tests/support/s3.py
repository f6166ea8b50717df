"""A real S3-compatible server for tests (issue 24): versitygw with its posix backend.

``make install`` builds versitygw at the version pinned in tools/versitygw/go.mod. Each test
gets its own server (free port, its data in the test's tmp dir) with an access log, which tells
exactly which S3 operations reached it (e.g. how many ``UploadPart`` of one object).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from support.infra import ServerProcess, built_binary, free_port

ACCESS = "REELHOUSETESTKEY"
SECRET = "reelhouse-test-secret-0123456789"


def versitygw_binary() -> str:
    return built_binary("REELHOUSE_VERSITYGW_BIN", "versitygw",
                        "run `make install` (it builds versitygw)")  # fmt: skip


@dataclass
class S3Server:
    url: str
    process: ServerProcess
    data: Path
    access_log: Path

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET, region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )  # fmt: skip

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> dict[str, int]:
        """Every object of ``bucket``: key → size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found

    def operations(self, name: str, key: str | None = None) -> list[str]:
        """Access-log lines of one S3 operation (``UploadPart``...), of one key if given."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text(errors="replace").splitlines()
        return [line for line in lines if f" s3_{name} " in line
                and (key is None or f" {key} " in line)]  # fmt: skip

    def target_body(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """A ``/api/storage-targets/create`` body for ``bucket`` on this server."""
        return {"storage_name": f"versitygw {bucket}", "provider": "other",
                "endpoint_url": self.url, "region": "us-east-1", "bucket": bucket,
                "path_style": True, "access_key_id": ACCESS, "secret_access_key": SECRET,
                **extra}  # fmt: skip


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """versitygw on a free loopback port, posix backend in this test's tmp dir."""
    port = free_port()
    data = tmp_path / "s3-data"
    data.mkdir()
    log = tmp_path / "s3-access.log"
    argv = [versitygw_binary(), "--access", ACCESS, "--secret", SECRET,
            "--port", f"127.0.0.1:{port}", "--access-log", str(log), "--quiet",
            "posix", str(data)]  # fmt: skip
    proc = ServerProcess("versitygw", argv, port, tmp_path / "versitygw.log")
    proc.start()
    try:
        yield S3Server(url=f"http://127.0.0.1:{port}", process=proc, data=data, access_log=log)
    finally:
        proc.stop()
