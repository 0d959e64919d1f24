"""Compare a mirror with its source tree: names, types, bytes and mtimes."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from mirror.disk import PART_SUFFIX


def tree_differences(source: Path, mirror: Path, *, mtimes: bool = True,
                     limit: int = 50, mtime_resolution_s: int = 1,
                     skip_hidden: bool = False) -> list[str]:
    """Every difference between two trees (up to ``limit``); empty when identical.

    ``mtime_resolution_s``: mtimes are compared truncated to this (60 for sources that list
    minutes only); ``skip_hidden``: ignore source names starting with a dot (servers whose
    indexes hide them, like nginx).
    """
    problems: list[str] = []

    def entry_difference(path: str, ea: os.DirEntry[str] | None,
                         eb: os.DirEntry[str] | None) -> str | None:
        """What is wrong with one name, other than inside a folder on both sides."""
        if eb is None:
            return f"missing in mirror: {path}"
        if ea is None:
            what = "partial download left" if eb.name.endswith(PART_SUFFIX) else "extra"
            return f"{what} in mirror: {path}"
        if eb.is_symlink():
            return f"symlink in mirror: {path}"
        if ea.is_dir(follow_symlinks=False) != eb.is_dir(follow_symlinks=False):
            return f"file/folder mismatch: {path}"
        return None if ea.is_dir(follow_symlinks=False) else file_difference(path, ea, eb)

    def file_difference(path: str, ea: os.DirEntry[str], eb: os.DirEntry[str]) -> str | None:
        sa, sb = ea.stat(), eb.stat()
        if sa.st_size != sb.st_size or not filecmp.cmp(ea.path, eb.path, shallow=False):
            return f"content differs: {path}"
        if mtimes and (int(sa.st_mtime) // mtime_resolution_s
                       != int(sb.st_mtime) // mtime_resolution_s):
            return f"mtime differs: {path} ({sa.st_mtime} vs {sb.st_mtime})"
        return None

    def walk(rel: str) -> bool:
        """False once ``limit`` problems are noted."""
        a, b = source / rel, mirror / rel
        names_a = {e.name: e for e in os.scandir(a)
                   if not (skip_hidden and e.name.startswith("."))}
        names_b = {e.name: e for e in os.scandir(b)}
        for name in sorted(names_a.keys() | names_b.keys()):
            path = f"{rel}/{name}" if rel else name
            ea, eb = names_a.get(name), names_b.get(name)
            problem = entry_difference(path, ea, eb)
            if problem is not None:
                problems.append(problem)
                if len(problems) >= limit:
                    return False
            elif ea is not None and ea.is_dir(follow_symlinks=False) and not walk(path):
                return False
        return True

    walk("")
    return problems
