"""Upload throughput and CPU per uploaded Mbit/s against a local versitygw (issue 24).

Two runs, with the same client and settings the janitor's uploader uses
(``reelhouse.common.objectstore.client``, multipart at ``--part-mb``, ``--concurrency`` files
at once, parts MD5-checked as the uploader does):

1. ``throughput``: ``--files`` files of ``--file-mb`` MiB uploaded as fast as possible: MB/s and
   this process's CPU seconds per uploaded Mbit/s (user + system, ``resource.getrusage``).
2. ``realtime``: ``--recordings`` recordings at ``--mbps`` Mbit/s each close a segment of
   ``--segment-s`` seconds every ``--segment-s`` seconds for ``--window`` seconds; each segment
   is uploaded when it closes. Falling behind = a segment's upload still running when the next
   one of its recording closes. Reports the worst and median upload time per segment.

    uv run python bench/upload.py            # about a minute
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.infra import ServerProcess, free_port  # noqa: E402

from reelhouse.common import objectstore  # noqa: E402

MIB = 1024 * 1024


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def upload(s3, bucket: str, key: str, path: Path, part: int) -> float:
    """One file as the uploader sends it: one PUT, or multipart parts with their MD5s."""
    started = time.monotonic()
    size = path.stat().st_size
    if size <= part:
        data = path.read_bytes()
        hashlib.md5(data, usedforsecurity=False)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return time.monotonic() - started
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    with path.open("rb") as fh:
        for n in range(1, (size + part - 1) // part + 1):
            data = fh.read(part)
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                  Body=data)["ETag"]  # fmt: skip
            assert etag.strip('"') == md5
            parts.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})  # fmt: skip
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--file-mb", type=int, default=32)
    ap.add_argument("--part-mb", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--recordings", type=int, default=5)
    ap.add_argument("--mbps", type=float, default=6.0)
    ap.add_argument("--segment-s", type=float, default=6.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    part = args.part_mb * MIB

    tmp = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    (tmp / "s3" / "bench").mkdir(parents=True)
    port = free_port()
    key_id, secret = "BENCHKEY", "bench-secret-0123456789"
    server = ServerProcess("versitygw", [str(ROOT / ".cache/bin/versitygw"), "--access", key_id,
                           "--secret", secret, "--port", f"127.0.0.1:{port}", "--quiet", "posix",
                           str(tmp / "s3")], port, tmp / "versitygw.log")  # fmt: skip
    server.start()
    try:
        target = objectstore.Target(id="0" * 24, provider="other",
                                    endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                                    bucket="bench", prefix="", path_style=True,
                                    storage_class=None, access_key_id=key_id,
                                    secret_access_key=secret)  # fmt: skip
        s3 = objectstore.client(target, timeout_s=60)
        src = tmp / "src"
        src.mkdir()
        # 1. throughput
        paths = []
        for i in range(args.files):
            p = src / f"f{i}.ts"
            p.write_bytes(os.urandom(args.file_mb * MIB))
            paths.append(p)
        cpu0, t0 = cpu_s(), time.monotonic()
        with cf.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda p: upload(s3, "bench", f"tp/{p.name}", p, part), paths))
        wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
        total_mbit = args.files * args.file_mb * MIB * 8 / 1e6
        server_cpu = _proc_cpu(server.proc.pid)
        throughput = {"files": args.files, "file_mb": args.file_mb, "part_mb": args.part_mb,
                      "concurrency": args.concurrency, "seconds": round(wall, 2),
                      "mbit_per_s": round(total_mbit / wall, 1),
                      "client_cpu_s_per_mbit": round(cpu / total_mbit, 5),
                      "client_cpu_pct_per_100_mbps": round(100 * cpu / total_mbit * 100, 2),
                      "versitygw_cpu_s_total": server_cpu}  # fmt: skip
        for p in paths:
            p.unlink()
        # 2. realtime: N recordings' segments, each uploaded when it closes
        seg_bytes = int(args.mbps * 1e6 / 8 * args.segment_s)
        seg = src / "segment.ts"
        seg.write_bytes(os.urandom(seg_bytes))
        every: list[cf.Future[float]] = []
        behind = 0
        cpu0, t0 = cpu_s(), time.monotonic()
        with cf.ThreadPoolExecutor(args.concurrency) as pool:
            tick = 0
            pending: dict[int, cf.Future[float]] = {}
            while time.monotonic() - t0 < args.window:
                for r in range(args.recordings):
                    prev = pending.get(r)
                    if prev is not None and not prev.done():
                        behind += 1
                    pending[r] = pool.submit(upload, s3, "bench", f"rt/{r}/{tick}.ts", seg, part)
                    every.append(pending[r])
                tick += 1
                time.sleep(max(0.0, t0 + tick * args.segment_s - time.monotonic()))
            times = [f.result() for f in every]
        wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
        realtime = {"recordings": args.recordings, "mbps_each": args.mbps,
                    "segment_s": args.segment_s, "segment_mb": round(seg_bytes / 1e6, 2),
                    "segments": tick * args.recordings, "fell_behind": behind,
                    "upload_s_median": round(statistics.median(times), 3),
                    "upload_s_max": round(max(times), 3),
                    "client_cpu_pct_of_one_core": round(100 * cpu / wall, 1)}  # fmt: skip
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    result = {"throughput": throughput, "realtime": realtime, "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except OSError:
        return None


if __name__ == "__main__":
    main()
