"""Builds a sample bucket on disk for the demo, the tests and the benchmarks.

Deterministic for a given seed: the same names, sizes, bytes and mtimes every time, so two
runs (or two brokers) can be compared file for file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

# Every character the issue names, a leading '-' and '.', CJK and emoji.
HOSTILE_NAMES = (
    "with space.txt", "plus+sign.txt", "hash#tag.txt", "question?mark.txt", "percent%41.txt",
    "amp&and=eq.txt", "single'quote.txt", 'double"quote.txt', "semi;colon,comma.txt",
    "[square].txt", "(round).txt", "{curly}.txt", "colon:star*.txt", "pipe|back\\slash.txt",
    "tilde~home.txt", "-leading-dash.txt", ".leading-dot.txt", "中文文件名.txt",
    "emoji 😀🎉.txt", "mixed 名前 + #1 (copy) [2] {x}.bin", "%2F not a slash.txt",
    "ends with space .txt", "..double-dot-prefix.txt", "~", "+", "#",
)
HOSTILE_FOLDERS = ("folder with space", "folder#hash", "folder?q", "папка", "[dir] {x} (y)",
                   "-dash", ".dot")
BASE_MTIME = 1_600_000_000  # 2020-09-13


@dataclass(frozen=True)
class BucketInfo:
    root: Path
    files: int
    folders: int
    empty_folders: int
    total_bytes: int


class _Builder:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.files = 0
        self.bytes = 0
        self.dirs: set[str] = set()
        self.empty = 0

    def folder(self, rel: str) -> Path:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))
        return path

    def file(self, rel: str, size: int) -> None:
        parent, _, _ = rel.rpartition("/")
        if parent:
            self.folder(parent)
        path = self.root / rel
        path.write_bytes(self.rng.randbytes(size))
        mtime = BASE_MTIME + self.rng.randrange(0, 100_000_000)
        os.utime(path, (mtime, mtime))
        self.files += 1
        self.bytes += size

    def small_size(self) -> int:
        # Log-normal around 15 KB, as real image buckets are; clipped to keep tests quick.
        return min(int(self.rng.lognormvariate(9.6, 1.0)), 256 * 1024)


def build_bucket(root: Path, *, files: int = 3000, seed: int = 1, deep: int = 40,  # noqa: PLR0913  (keyword knobs of the sample's shape)
                 wide: int = 2500, big_files: int = 2, big_size: int = 9 * 1024 * 1024,
                 zero_files: int = 5, empty_folders: int = 4) -> BucketInfo:
    """Write the sample tree under ``root`` (which must be empty or missing)."""
    root.mkdir(parents=True, exist_ok=True)
    b = _Builder(root, seed)
    chain = "/".join(f"level{i:02d}" for i in range(1, deep + 1))
    if deep:
        b.file(f"deep/{chain}/bottom.txt", 100)
        b.file(f"deep/{chain[: len(chain) // 2].rstrip('/')}/middle.txt", 50)
    for i in range(wide):
        b.file(f"wide/item-{i:05d}.dat", b.rng.randrange(0, 2048))
    for name in HOSTILE_NAMES:
        b.file(f"names/{name}", b.rng.randrange(1, 4096))
    for folder in HOSTILE_FOLDERS:
        b.file(f"names/{folder}/inside {folder}.txt", b.rng.randrange(1, 4096))
    for i in range(zero_files):
        b.file(f"zero/empty-{i}.txt", 0)
    for i in range(big_files):
        b.file(f"big/large-{i}.bin", big_size + i * 12345)
    for i in range(empty_folders):
        b.folder(f"empty/e{i}" if i % 2 else f"nested-empty/n{i}/inner")
        b.empty += 1
    i = 0
    while b.files < files:
        top = b.rng.randrange(0, 12)
        sub = b.rng.randrange(0, 6)
        b.file(f"photos/{2014 + top}/{sub:02d}/img-{i:06d}.jpg", b.small_size())
        i += 1
    return BucketInfo(root, b.files, len(b.dirs), b.empty, b.bytes)
