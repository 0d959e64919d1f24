"""Group commit on a real file system: files finished together share their syncs, no rename
is made before the data sync, and a failed sync fails every file of its round."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.checksum import Checksum
from mirror.disk import PART_SUFFIX, Disk, Placement, os_error
from mirror.diskpool import DiskPool
from mirror.errors import DiskFull, FatalError, IntegrityError
from mirror.groupsync import GroupSync

MTIME = 1_600_000_000.25


class Recording(GroupSync):
    """Really syncs; notes which of the watched targets exist at each sync (and, in
    ``states``, whether each watched file is in place, ``T``, or a complete part, ``P``), and
    fails the sync calls named in ``fail`` (1 = the first call) with an OSError of ``code``."""

    def __init__(self, disk: Disk, watched: list[Path], fail: tuple[int, ...] = (),
                 code: int = errno.EIO, gate: threading.Event | None = None,
                 sizes: dict[Path, int] | None = None) -> None:
        super().__init__(disk.root, disk.run, os_error)
        self.watched = watched
        self.sizes = sizes or {}
        self.fail = fail
        self.code = code
        self.gate = gate
        self.seen: list[int] = []  # per sync call: how many watched targets existed
        self.states: list[dict[Path, str]] = []
        self.completed = 0  # sync calls returned

    def sync_fs(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self.seen.append(sum(p.exists() for p in self.watched))
        self.states.append({p: _state(p, n) for p, n in self.sizes.items()})
        if len(self.seen) in self.fail:
            raise OSError(self.code, os.strerror(self.code))
        super().sync_fs()
        self.completed += 1


def _state(target: Path, size: int) -> str:
    if target.exists():
        return "T"
    part = target.with_name(target.name + PART_SUFFIX)
    return "P" if part.exists() and part.stat().st_size == size else "."


@pytest.fixture
def pool() -> Iterator[DiskPool]:
    with DiskPool(8) as p:
        yield p


def body(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (50 + i % 300)


async def write(disk: Disk, path: str, data: bytes) -> None:
    part = await disk.run(disk.begin, path, len(data), MTIME, 0.001)
    assert part is not None
    try:
        await disk.commit(part, len(data), MTIME, Checksum("md5", hashlib.md5(data).hexdigest()),
                          data, "md5")
    finally:
        if part.is_open:
            await disk.run(part.close)


def parts_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(PART_SUFFIX)]


async def test_many_files_share_few_rounds_and_are_renamed_after_their_data_sync(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    paths = [f"d{i % 7}/f{i}.bin" for i in range(300)]
    targets = [tmp_path / p for p in paths]
    group = Recording(disk, targets, sizes={t: len(body(i)) for i, t in enumerate(targets)})
    disk.group = group
    returned: dict[Path, int] = {}  # syncs completed when each caller got its answer

    async def one(i: int) -> None:
        await write(disk, paths[i], body(i))
        returned[targets[i]] = group.completed

    await asyncio.gather(*(one(i) for i in range(300)))
    for i, target in enumerate(targets):
        assert target.read_bytes() == body(i)
        assert target.stat().st_mtime == pytest.approx(MTIME, abs=1e-6)
    assert parts_left(tmp_path) == []
    assert group.files == 300
    assert 2 <= group.rounds <= 30, group.rounds  # far fewer than one per file
    assert group.syncs == group.rounds == len(group.states)  # one sync a round
    for target in targets:
        states = [s[target] for s in group.states]
        first = states.index("T")  # the first sync that saw it in place made its rename durable
        # At the sync before, its part was complete: its bytes were flushed before the rename.
        assert first >= 1 and states[first - 1] == "P", states
        assert returned[target] >= first + 1  # its caller was answered after that sync


async def test_a_failed_data_sync_fails_the_whole_round_and_renames_nothing(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    paths = [f"f{i}.bin" for i in range(40)]
    group = Recording(disk, [tmp_path / p for p in paths], fail=(1,))
    group.window_s = 0.05  # one round for all of them
    disk.group = group
    results = await asyncio.gather(*(write(disk, p, body(i)) for i, p in enumerate(paths)),
                                   return_exceptions=True)
    assert group.rounds == 1 and group.seen == [0]  # no rename sync: nothing was renamed
    for r in results:
        assert isinstance(r, FatalError) and not isinstance(r, DiskFull)
        assert "while flushing 40 files to disk" in str(r), r
    assert len({id(r) for r in results}) == 40  # each caller its own exception
    # Nothing in place, and the parts (bytes of unknown state on the disk) are gone.
    assert list(tmp_path.iterdir()) == []
    # The next round works again.
    await write(disk, "after.bin", b"fine")
    assert (tmp_path / "after.bin").read_bytes() == b"fine"


async def test_a_failed_rename_sync_fails_every_file_and_enospc_is_disk_full(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    paths = [f"f{i}.bin" for i in range(20)]
    group = Recording(disk, [tmp_path / p for p in paths], fail=(2,), code=errno.ENOSPC)
    group.window_s = 0.05
    disk.group = group
    results = await asyncio.gather(*(write(disk, p, body(i)) for i, p in enumerate(paths)),
                                   return_exceptions=True)
    assert all(isinstance(r, DiskFull) and "no space left" in str(r) for r in results), results
    # The renames were made after a successful data sync (seen: none, then all, at the sync
    # of the next round, which failed); none of the files is reported done, so none of their
    # jobs is acked.
    assert group.seen == [0, 20]
    assert parts_left(tmp_path) == []


async def test_without_syncfs_each_part_and_each_folder_is_fsynced(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    group = Recording(disk, [], fail=(1,), code=errno.ENOSYS)
    group.window_s = 0.05
    disk.group = group
    await asyncio.gather(*(write(disk, f"d{i % 3}/f{i}.bin", body(i)) for i in range(12)))
    assert group.fallback and group.rounds == 1
    assert group.syncs == 1 + 12 + 3  # the failed syncfs, each file, each folder
    for i in range(12):
        assert (tmp_path / f"d{i % 3}/f{i}.bin").read_bytes() == body(i)
    await write(disk, "later.bin", b"x")  # later rounds go straight to the fallback
    assert len(group.seen) == 1 and group.syncs == 16 + 2


async def test_a_large_file_is_fsynced_by_its_writer_and_shares_the_rename_sync(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    group = Recording(disk, [])
    group.own_sync_bytes = 100_000
    disk.group = group
    await write(disk, "big.bin", os.urandom(150_000))
    assert group.rounds == 1 and group.syncs == 1  # renamed, then one sync: done
    await write(disk, "small.bin", b"small")  # a sync for its bytes, one for its rename
    assert group.rounds == 3 and group.syncs == 3


async def test_a_mismatch_never_joins_a_round(tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    assert disk.group is not None
    part = await disk.run(disk.begin, "f.bin", 10, None, 0.001)
    assert part is not None
    with pytest.raises(IntegrityError, match="got 3 bytes"):
        await disk.commit(part, 10, None, None, b"abc")
    assert disk.group.rounds == 0 and list(tmp_path.iterdir()) == []


async def test_files_waiting_for_their_syncs_are_counted(tmp_path: Path,
                                                         pool: DiskPool) -> None:
    """The worker holds more jobs while files wait for the disk (their transfer slots are
    free): the count it reads is the files inside ``settle``, until their last sync."""
    disk = Disk(tmp_path, pool=pool)
    gate = threading.Event()
    group = Recording(disk, [], gate=gate)
    disk.group = group
    placement = Placement.single(disk, 2)
    writes = [asyncio.ensure_future(write(disk, f"d/f{i}.bin", body(i))) for i in range(10)]
    while group.waiting < 10:
        await asyncio.sleep(0.001)
    assert placement.syncing() == 10  # one disk of two shards, counted once
    gate.set()
    await asyncio.gather(*writes)
    assert group.waiting == 0 and placement.syncing() == 0
    assert Placement.single(Disk(tmp_path, fsync=False, pool=pool), 1).syncing() == 0


async def test_a_cancelled_caller_waits_for_the_round_holding_its_part(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    gate = threading.Event()
    group = Recording(disk, [], gate=gate)
    disk.group = group
    task = asyncio.ensure_future(write(disk, "f.bin", b"data"))
    while group.rounds == 0:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the round (blocked in its sync) still has the part
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "f.bin").read_bytes() == b"data" and parts_left(tmp_path) == []


async def test_a_caller_cancelled_before_its_round_keeps_its_part(
        tmp_path: Path, pool: DiskPool) -> None:
    disk = Disk(tmp_path, pool=pool)
    assert disk.group is not None
    disk.group.window_s = 5.0
    task = asyncio.ensure_future(write(disk, "f.bin", b"data"))
    while not disk.group._pending:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert disk.group.rounds == 0 and not (tmp_path / "f.bin").exists()
    assert (tmp_path / ("f.bin" + PART_SUFFIX)).read_bytes() == b"data"  # kept for a resume


async def test_no_fsync_and_per_file_fsync_need_no_rounds(tmp_path: Path, pool: DiskPool) -> None:
    for fsync, grouped in ((False, True), (True, False)):
        disk = Disk(tmp_path / f"{fsync}{grouped}", fsync=fsync, grouped=grouped, pool=pool)
        disk.root.mkdir()
        assert disk.group is None
        await asyncio.gather(*(write(disk, f"f{i}", body(i)) for i in range(10)))
        assert all((disk.root / f"f{i}").read_bytes() == body(i) for i in range(10))
