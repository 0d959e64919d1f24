"""What durability costs: per-file fsync against group commit against no flush at all.

Writes N small files (and optionally a few large ones) through the real ``Disk``/``PartFile``
API, C at a time on one asyncio loop with the real disk pool, as ``fetch_file`` does with
bodies already in memory (no network: the disk side alone). Modes:

- ``today``: the commit before group commit: fsync of the part, utime, rename (no folder
  fsync, so the rename was not yet durable when the job was acked);
- ``file``: ``Disk(grouped=False)``: per-file fsync of the part and of its folder;
- ``group``: ``Disk()``, the default: group commit (``mirror.groupsync``);
  ``group:W`` with a gathering window of W ms, ``group-nolarge`` without the own fsync of
  large files;
- ``none``: ``--no-fsync``.

``--sync-delay MS`` stands in for a disk whose cache flush is slow (this VM's virtual disk
answers one in 0.1-0.5 ms; a SATA SSD takes a few ms, a disk drive more): every fsync and
every sync call of a group round first sleeps MS in its thread. Sleeps of concurrent fsyncs
overlap, which flatters per-file fsync (a real device serialises its flushes; ext4 shares a
journal commit among fsyncs that come together).

Every run writes into a fresh folder, checks every file, and deletes it afterwards; before
each run ``sync`` flushes what the previous one left. Runs go round by round (every mode once,
then again) so that the machine's drift falls on all alike.

    python bench/fsync.py [--files 5000] [--size 15000] [--large 0] [--large-size 32M]
                          [--concurrency 64] [--rounds 3] [--modes today,file,group,none]
                          [--dir /var/tmp] [--sync-delay MS]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mirror.disk import Disk
from mirror.diskpool import DiskPool, disk_pool
from mirror.groupsync import GroupSync
from mirror.partfile import PartFile

MTIME = 1_700_000_000.0
CHUNK = 1 << 20


def _commit_today(part: PartFile, data: bytes, size: int, md5: str) -> None:
    """The commit of main before group commit (fsync, utime, rename)."""
    if data:
        part.write(data, True)
    try:
        if part.size != size:
            raise RuntimeError("size")
        os.fsync(part._fd)
        ns = int(MTIME * 1e9)
        os.utime(part._fd, ns=(ns, ns))
        part.rename()
    finally:
        part.close()


@dataclass
class Result:
    mode: str
    wall_s: float
    files: int
    syncs: int
    rounds: int


def make_disk(root: Path, mode: str, pool: DiskPool) -> Disk:
    name, _, arg = mode.partition(":")
    if name in ("today", "none"):
        return Disk(root, fsync=name != "none", grouped=False, pool=pool)
    if name == "file":
        return Disk(root, grouped=False, pool=pool)
    disk = Disk(root, pool=pool)
    assert disk.group is not None
    if arg:
        disk.group.window_s = float(arg) / 1000
    if name == "group-nolarge":
        disk.group.own_sync_bytes = 1 << 62
    elif name != "group":
        raise SystemExit(f"unknown mode {mode!r}")
    return disk


async def one_run(base: Path, mode: str, files: list[tuple[str, bytes]],
                  concurrency: int) -> Result:
    root = Path(tempfile.mkdtemp(prefix="fsync-bench-", dir=base))
    pool = disk_pool(concurrency)
    disk = make_disk(root, mode, pool)
    today = mode == "today"
    slots = asyncio.Semaphore(concurrency)

    async def put(path: str, data: bytes) -> None:
        async with slots:
            part = await disk.run(disk.begin, path, len(data), MTIME, 0.001)
            assert part is not None
            md5 = hashlib.md5(data).hexdigest()
            large = len(data) > CHUNK
            head, tail = (data[:-CHUNK], data[-CHUNK:]) if large else (b"", data)
            if head:  # as _receive does: the bulk in chunk writes of their own, then the rest
                for pos in range(0, len(head), CHUNK):
                    await disk.run(part.write_many, [head[pos:pos + CHUNK]], True, alone=True)
            if today:
                await disk.run(_commit_today, part, tail, len(data), md5, alone=True)
            else:
                await disk.commit(part, len(data), MTIME, md5, tail, True, alone=large)

    os.sync()
    started = time.perf_counter()
    await asyncio.gather(*(put(p, d) for p, d in files))
    wall = time.perf_counter() - started
    pool.shutdown()
    for path, data in files:
        target = root / path
        if target.stat().st_size != len(data) or target.read_bytes()[-64:] != data[-64:]:
            raise SystemExit(f"{mode}: {path} is wrong")
    group = disk.group
    result = Result(mode, wall, len(files), group.syncs if group else 0,
                    group.rounds if group else 0)
    shutil.rmtree(root)
    return result


def slow_flushes(delay_s: float) -> None:
    fsync, sync_fs = os.fsync, GroupSync.sync_fs

    def slow_fsync(fd: int) -> None:
        time.sleep(delay_s)
        fsync(fd)

    def slow_sync_fs(self: GroupSync) -> None:
        time.sleep(delay_s)
        sync_fs(self)

    os.fsync = slow_fsync
    GroupSync.sync_fs = slow_sync_fs  # type: ignore[method-assign]


def filesystem(path: Path) -> str:
    best, kind, device = "", "?", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            dev, point, fstype = line.split()[:3]
            if str(path.resolve()).startswith(point) and len(point) > len(best):
                best, kind, device = point, fstype, dev
    return f"{kind} on {device} (mounted at {best})"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--size", type=int, default=15000, help="median small file size")
    ap.add_argument("--large", type=int, default=0, help="large files written alongside")
    ap.add_argument("--large-size", default="32M")
    ap.add_argument("--folders", type=int, default=250)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="today,file,group,none")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--sync-delay", type=float, default=0.0, metavar="MS")
    args = ap.parse_args()
    if args.sync_delay:
        slow_flushes(args.sync_delay / 1000)
    rng = random.Random(7)
    blob = os.urandom(4 * args.size + parse_size(args.large_size))
    files: list[tuple[str, bytes]] = []
    for i in range(args.files):
        n = max(1, int(rng.lognormvariate(0, 0.6) * args.size))
        start = rng.randrange(0, len(blob) - n)
        files.append((f"d{i % args.folders}/f{i}.bin", blob[start:start + n]))
    large = parse_size(args.large_size)
    for i in range(args.large):
        files.insert(len(files) * i // max(1, args.large),
                     (f"large/l{i}.bin", blob[i:i + large]))
    total = sum(len(d) for _, d in files)
    modes = args.modes.split(",")
    print(f"# {platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
          f"Python {sys.version.split()[0]}; {filesystem(args.dir)}")
    print(f"# {len(files)} files ({args.large} of {args.large_size}), "
          f"{total / 1e6:.1f} MB, {args.concurrency} at once, {args.rounds} rounds"
          + (f", {args.sync_delay} ms added to each flush" if args.sync_delay else ""))
    results: dict[str, list[Result]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            res = asyncio.run(one_run(args.dir, mode, files, args.concurrency))
            results[mode].append(res)
            print(f"round {r + 1} {mode:>14}: {res.wall_s:6.2f} s {res.files / res.wall_s:8.0f} "
                  f"files/s  syncs {res.syncs} rounds {res.rounds}", flush=True)
    print("\n| mode | wall s, median (all) | files/s | MB/s | sync calls | rounds |")
    print("|---|---|---|---|---|---|")
    for mode, rs in results.items():
        walls = [x.wall_s for x in rs]
        med = statistics.median(walls)
        print(f"| {mode} | {med:.2f} ({', '.join(f'{w:.2f}' for w in walls)}) | "
              f"{len(files) / med:.0f} | {total / 1e6 / med:.1f} | "
              f"{rs[-1].syncs or '-'} | {rs[-1].rounds or '-'} |")


if __name__ == "__main__":
    main()
