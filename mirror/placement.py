"""Which disk each shard of a job goes to: ``--disk 0-3=/mnt/a --disk 4-6=/mnt/b`` or ``--dest``.

A worker consumes exactly the shards it has a disk for, so a file lands on the disk its shard
names and on no other. Claims are checked before any work: two disks claiming one shard, a
shard the job does not have, or a path that is not a writable folder stop the worker at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror.disk import Disk, Placement
from mirror.diskpool import DiskPool
from mirror.errors import ConfigError, MirrorError


@dataclass(frozen=True)
class DiskClaim:
    shards: frozenset[int]
    path: Path


def parse_shards(text: str) -> frozenset[int]:
    """``0-3``, ``5``, ``0,2,4-6`` -> the shard numbers."""
    out: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise ConfigError(f"--disk: {text!r} is not a shard list like 0-3 or 0,2,5-6") from None
        if lo < 0 or hi < lo:
            raise ConfigError(f"--disk: shard range {part!r} is empty or negative")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_claim(text: str) -> DiskClaim:
    shards, eq, path = text.partition("=")
    if not eq or not path.strip():
        raise ConfigError(f"--disk {text!r}: expected SHARDS=PATH, for example 0-3=/mnt/a")
    return DiskClaim(parse_shards(shards), Path(path.strip()))


async def build_placement(claims: Sequence[DiskClaim], dest: Path | None, shards: int, *,
                          fsync: bool, pool: DiskPool) -> Placement:
    """The worker's placement; an empty one for a worker that only lists."""
    if claims and dest is not None:
        raise ConfigError("give either --dest (every shard in one folder) or --disk SHARDS=PATH, "
                          "not both")
    if dest is not None:
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        claims = [DiskClaim(frozenset(range(shards)), dest)]
    owner: dict[int, Path] = {}
    for claim in claims:
        for shard in sorted(claim.shards):
            if shard >= shards:
                raise ConfigError(f"--disk {claim.path}: the job has shards 0-{shards - 1}, "
                                  f"not {shard}")
            if shard in owner and owner[shard] != claim.path:
                raise ConfigError(f"shard {shard} is claimed by two disks: {owner[shard]} and "
                                  f"{claim.path}")
            owner[shard] = claim.path
    disks: dict[Path, Disk] = {}
    for path in dict.fromkeys(owner.values()):
        disk = Disk(path, fsync=fsync, pool=pool)
        # A --disk path is never created: a missing mount point must not turn into a folder
        # on the root filesystem that silently fills up.
        if not await asyncio.to_thread(path.is_dir):
            raise ConfigError(f"--disk {path}: not an existing folder (is the disk mounted?)")
        try:
            await disk.run(disk.check_writable)
        except (OSError, MirrorError) as exc:
            raise ConfigError(f"{path} is not a writable folder: {exc}") from exc
        disks[path] = disk
    return Placement({shard: disks[path] for shard, path in owner.items()})


__all__ = ["DiskClaim", "build_placement", "parse_claim", "parse_shards"]
