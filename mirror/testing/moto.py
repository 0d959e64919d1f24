"""moto's S3 server (``moto[server]``) on a free loopback port for tests and the benchmark,
and the filling of its buckets from a local tree.

The server runs as our child and is stopped by its process id. S3 does not let a client set
LastModified, so after an upload the local tree's mtimes are set to the store's, and a
mirror can be compared with the tree file for file, mtime for mtime.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from mirror.testing.rabbit_node import free_port

ACCESS_KEY, SECRET_KEY, REGION = "AKIDMIRRORTEST", "mirror-test-secret", "us-east-1"
# What a source (or a `mirror` process) needs to reach the server: keys moto accepts, and no
# look at this host's AWS files or at a metadata service.
S3_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
          "AWS_REGION": REGION}
PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last


class MotoServer:
    """Blocking start and stop (a session fixture has no event loop); ``async with`` runs
    them in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="bucket-mirror-moto-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.base / "server.log").open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        log = (self.base / "server.log").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"moto_server did not start:\n{log[-2000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.base, True)

    async def __aenter__(self) -> MotoServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)


def client(url: str) -> Any:
    """A botocore S3 client of the server (blocking: for filling buckets in a thread)."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))


def put(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """One object; from PART_SIZE on, a multipart upload (its ETag is no MD5)."""
    if len(data) <= PART_SIZE:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), PART_SIZE), start=1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                              Body=data[start:start + PART_SIZE])["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": parts})


def fill(url: str, bucket: str, objects: Mapping[str, bytes], threads: int = 8) -> None:
    """Create ``bucket`` with these keys (blocking)."""
    s3 = client(url)
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(put, s3, bucket, k, v) for k, v in objects.items()]:
            done.result()


def tree_objects(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` as a key, and every empty folder as a ``folder/`` marker."""
    objects: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if prefix and not dirnames and not filenames:
            objects[prefix] = b""
        for name in filenames:
            objects[prefix + name] = (Path(dirpath) / name).read_bytes()
    return objects


def stamp(url: str, bucket: str, root: Path, keys: Iterable[str] | None = None) -> None:
    """Give the files under ``root`` the mtimes of their keys in ``bucket`` (blocking)."""
    wanted = None if keys is None else set(keys)
    pages = client(url).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            path = root / key
            if key.endswith("/") or (wanted is not None and key not in wanted):
                continue
            when = item["LastModified"].timestamp()
            os.utime(path, (when, when))


def upload_tree(url: str, bucket: str, root: Path) -> int:
    """``root`` as ``bucket``, mtimes stamped back onto ``root``; the number of keys."""
    objects = tree_objects(root)
    fill(url, bucket, objects)
    stamp(url, bucket, root)
    return len(objects)


__all__ = ["ACCESS_KEY", "PART_SIZE", "REGION", "S3_ENV", "SECRET_KEY", "MotoServer", "client",
           "fill", "put", "stamp", "tree_objects", "upload_tree"]
