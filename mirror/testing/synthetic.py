"""A bucket of any size made up from a seed: names, sizes, mtimes and bytes derived, none stored.

Layout: ``d000000/`` ... folders at the root, each holding ``per_folder`` files
``f000000123.bin`` (the global file number), so a million-file bucket is 1,000 folders of 1,000
files. A file's bytes are a keyed BLAKE2b stream of its number: the same on every request, and
cheap enough to serve thousands of files per second.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

BASE_MTIME = 1_700_000_000


@dataclass(frozen=True)
class SyntheticBucket:
    files: int
    seed: int = 0
    per_folder: int = 1000
    max_size: int = 4096

    @property
    def folders(self) -> int:
        return (self.files + self.per_folder - 1) // self.per_folder

    @staticmethod
    def folder_name(n: int) -> str:
        return f"d{n:06d}"

    @staticmethod
    def file_name(i: int) -> str:
        return f"f{i:09d}.bin"

    def _digest(self, i: int, what: bytes) -> bytes:
        return hashlib.blake2b(i.to_bytes(8, "big") + what,
                               key=self.seed.to_bytes(8, "big"), digest_size=64).digest()

    def size(self, i: int) -> int:
        return int.from_bytes(self._digest(i, b"size")[:4], "big") % (self.max_size + 1)

    def mtime(self, i: int) -> int:
        return BASE_MTIME + i

    def content(self, i: int) -> bytes:
        size = self.size(i)
        block = self._digest(i, b"data")
        return (block * (size // len(block) + 1))[:size]

    def locate(self, key: str) -> tuple[str, int] | None:  # noqa: PLR0911  (one return per kind of key)
        """("root", 0), ("folder", n) or ("file", i) for a bucket-relative key."""
        if key == "":
            return "root", 0
        parts = key.split("/")
        if not parts[0].startswith("d") or not parts[0][1:].isdigit():
            return None
        folder = int(parts[0][1:])
        if folder >= self.folders or parts[0] != self.folder_name(folder):
            return None
        if len(parts) == 1:
            return "folder", folder
        name = parts[1]
        if len(parts) != 2 or not (name.startswith("f") and name.endswith(".bin")):
            return None
        digits = name[1:-4]
        if not digits.isdigit():
            return None
        i = int(digits)
        if i >= self.files or i // self.per_folder != folder or name != self.file_name(i):
            return None
        return "file", i

    def stat(self, key: str) -> os.stat_result | None:
        where = self.locate(key)
        if where is None:
            return None
        kind, n = where
        if kind == "file":
            mt = self.mtime(n)
            return os.stat_result((stat.S_IFREG | 0o644, n, 0, 1, 0, 0, self.size(n), mt, mt, mt))
        return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, BASE_MTIME,
                               BASE_MTIME, BASE_MTIME))

    def entries(self, key: str) -> list[tuple[str, bool, int, int]]:
        """(name, is_dir, size, mtime) of a folder, files first then folders, by name."""
        where = self.locate(key)
        if where is None or where[0] == "file":
            return []
        if where[0] == "root":
            return [(self.folder_name(n), True, 0, BASE_MTIME) for n in range(self.folders)]
        first = where[1] * self.per_folder
        last = min(self.files, first + self.per_folder)
        return [(self.file_name(i), False, self.size(i), self.mtime(i))
                for i in range(first, last)]

    def total_bytes(self) -> int:
        return sum(self.size(i) for i in range(self.files))


__all__ = ["SyntheticBucket"]
