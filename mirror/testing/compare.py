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

    def note(text: str) -> bool:
        problems.append(text)
        return len(problems) >= limit

    def walk(rel: str) -> bool:
        a, b = source / rel, mirror / rel
        names_a = {e.name: e for e in os.scandir(a)
                   if not (skip_hidden and e.name.startswith("."))}
        names_b = {e.name: e for e in os.scandir(b)}
        for name in sorted(names_a.keys() | names_b.keys()):
            path = f"{rel}/{name}" if rel else name
            ea, eb = names_a.get(name), names_b.get(name)
            if eb is None:
                if note(f"missing in mirror: {path}"):
                    return True
                continue
            if ea is None:
                what = "partial download left" if name.endswith(PART_SUFFIX) else "extra"
                if note(f"{what} in mirror: {path}"):
                    return True
                continue
            if eb.is_symlink():
                if note(f"symlink in mirror: {path}"):
                    return True
                continue
            if ea.is_dir(follow_symlinks=False) != eb.is_dir(follow_symlinks=False):
                if note(f"file/folder mismatch: {path}"):
                    return True
                continue
            if ea.is_dir(follow_symlinks=False):
                if walk(path):
                    return True
                continue
            sa, sb = ea.stat(), eb.stat()
            if sa.st_size != sb.st_size or not filecmp.cmp(ea.path, eb.path, shallow=False):
                if note(f"content differs: {path}"):
                    return True
            elif mtimes and (int(sa.st_mtime) // mtime_resolution_s
                             != int(sb.st_mtime) // mtime_resolution_s) and note(
                f"mtime differs: {path} ({sa.st_mtime} vs {sb.st_mtime})"
            ):
                return True
        return False

    walk("")
    return problems
