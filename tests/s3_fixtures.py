"""The S3 test server: moto on loopback for the session, its buckets filled once, and the
signature-checking fault proxy in front of it (``mirror.testing.s3proxy``).

Import the fixtures into a test module (``from tests.s3_fixtures import moto_server, ...``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror.testing.moto import MotoServer, fill, stamp, upload_tree
from mirror.testing.sample import BucketInfo, build_bucket

BUCKET, HOSTILE_BUCKET = "mirror-test", "mirror-hostile"
# Keys that cannot be files, each with what the mirror must make of it.
HOSTILE_KEYS = {
    "a/../x": b"dot-dot part",  # refused: '..'
    "a//b": b"empty part",  # refused: ''
    "/lead": b"leading slash",  # refused: '/' (an absolute name)
    "c/./d": b"dot part",  # refused: '.'
    "full-marker/": b"a folder key with bytes",  # refused: an empty name
}
HOSTILE_GOOD = {"good/one.txt": b"one", "good/two.bin": os.urandom(3000), "top.txt": b"top",
                "marker/": b"", "a/fine.txt": b"fine"}


@dataclass(frozen=True)
class S3Bucket:
    url: str  # moto's, without the proxy
    name: str
    root: Path  # the same tree on disk, mtimes as the store has them
    keys: int
    info: BucketInfo


def need_moto() -> None:
    if shutil.which("moto_server") is None:
        message = "moto_server is not installed (pip install 'moto[server]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    need_moto()
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> S3Bucket:
    """Over 2,000 keys: deep and wide folders, the odd names of the sample (spaces, unicode,
    ``+ % ? #``...), zero-byte files, empty folders as ``folder/`` markers, a 6 MB multipart
    object."""
    root = tmp_path_factory.mktemp("s3") / "data"
    info = build_bucket(root, files=2100, deep=6, wide=700, big_files=1,
                        big_size=6 * 1024 * 1024 + 7, seed=5)
    keys = upload_tree(moto_server.url, BUCKET, root)
    assert keys >= 2000
    return S3Bucket(moto_server.url, BUCKET, root, keys, info)


@pytest.fixture(scope="session")
def hostile_bucket(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bucket of good keys and keys that cannot be files; returns the good part on disk."""
    root = tmp_path_factory.mktemp("s3-hostile") / "good"
    for key, data in HOSTILE_GOOD.items():
        path = root / key
        if key.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    fill(moto_server.url, HOSTILE_BUCKET, {**HOSTILE_GOOD, **HOSTILE_KEYS})
    stamp(moto_server.url, HOSTILE_BUCKET, root, [k for k in HOSTILE_GOOD if k[-1] != "/"])
    return root


__all__ = ["BUCKET", "HOSTILE_BUCKET", "HOSTILE_GOOD", "HOSTILE_KEYS", "S3Bucket",
           "hostile_bucket", "moto_server", "need_moto", "s3_bucket"]
