"""One mirror root on a local disk, and the only code that writes under it.

Rules kept here (DESIGN "Rules that keep data safe"):
- a remote path maps to the same relative path under the root, component by component; a
  component that is empty, ``.``, ``..``, holds NUL or ``/``, is not valid UTF-8, is longer than
  NAME_MAX bytes, or ends with our part suffix is refused (``UnsafePath``), never rewritten;
- every file is written to ``<name>.mirror.part`` beside its target, locked, checked, stamped,
  flushed and renamed (``mirror.partfile``; flushes shared by files finished together:
  ``mirror.groupsync``);
- symlinks under the root are never followed: every folder on the way is checked with lstat,
  files are opened with O_NOFOLLOW, and rename replaces a link instead of writing through it.

Everything here is blocking and runs in a worker thread (see ``Disk.run``), except
``Disk.commit``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mirror.checksum import Algorithm, Checksum
from mirror.diskpool import DiskPool
from mirror.errors import Busy, FatalError, UnsafePath
from mirror.groupsync import GroupSync
from mirror.partfile import NAME_MAX, PART_SUFFIX, PartFile, finish, os_error, part_name, prepare

T = TypeVar("T")
PATH_MAX = 4096
_DIR_CACHE = 50_000  # folders known to exist; bounded so memory does not grow with the bucket


def check_name(name: str) -> None:
    """Refuse a single remote name component that cannot be written safely."""
    if name in ("", ".", ".."):
        raise UnsafePath(f"name {name!r} is not allowed as a file or folder name")
    if "\x00" in name:
        raise UnsafePath(f"name {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise UnsafePath(f"name {name!r} is an absolute path")
    if "/" in name:
        raise UnsafePath(f"name {name!r} contains '/'")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafePath(f"name {name!r} is not valid UTF-8") from exc
    if len(raw) > NAME_MAX:
        raise UnsafePath(
            f"name {name[:40]!r}... is too long: {len(raw)} bytes, the local filesystem allows "
            f"{NAME_MAX}"
        )
    if name.endswith(PART_SUFFIX):
        raise UnsafePath(f"name {name!r} ends with {PART_SUFFIX}, reserved for partial downloads")


def split_path(path: str) -> list[str]:
    """Validate a source-relative path; '' is the root."""
    if path == "":
        return []
    if path.startswith("/"):
        raise UnsafePath(f"path {path!r} is absolute")
    parts = path.split("/")
    for part in parts:
        check_name(part)
    if len(path.encode("utf-8")) > PATH_MAX - 512:
        raise UnsafePath(f"path {path[:60]!r}... is too long for the local filesystem")
    return parts


class Disk:
    """A mirror root. Methods are blocking; call them through ``await disk.run(...)``,
    except ``commit``.

    ``fsync``: no job is acked before its file is durably in place; ``grouped``: files
    finished together share their flushes (``mirror.groupsync``), otherwise each file is
    fsynced with its folder on its own. Without ``fsync`` nothing is flushed.
    """

    def __init__(self, root: Path, *, fsync: bool = True, grouped: bool = True,
                 pool: DiskPool | None = None) -> None:
        self.root = root
        self.fsync = fsync
        self._root_str = str(root)
        self._dirs: OrderedDict[str, None] = OrderedDict()
        self._pool = pool
        self.group = GroupSync(root, self.run, os_error) if fsync and grouped else None

    async def commit(self, part: PartFile, expected_size: int, mtime: float | None,  # noqa: PLR0913  (what one file's commit checks and stamps)
                     checksum: Checksum | None, data: bytes = b"",
                     track: Algorithm | None = None, *,
                     alone: bool = False, waiting: Callable[[], None] | None = None) -> None:
        """Append ``data``, check, stamp, flush and rename into place; returns once the file
        is durably in place (with ``fsync``), and the part is closed. ``alone`` for a call
        that may take long (a large ``data``, a resumed part to hash). ``waiting`` is
        called once the file only waits for its group's sync."""
        group = self.group
        if group is None:
            await self.run(finish, part, data, track, expected_size, mtime, checksum,
                           alone=alone or self.fsync)
            return
        own = part.size + len(data) >= group.own_sync_bytes
        await self.run(prepare, part, data, track, expected_size, mtime, checksum, own,
                       alone=alone or own)
        if waiting is not None:
            waiting()
        await group.settle(part)

    async def run(self, fn: Callable[..., T], *args: object, alone: bool = False) -> T:
        """Run blocking file work off the loop; ``alone`` for calls that may take long."""
        if self._pool is None:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        return await self._pool.run(fn, *args, alone=alone)

    def check_writable(self) -> None:
        st = os.stat(self.root)
        if not stat.S_ISDIR(st.st_mode) or not os.access(self.root, os.W_OK | os.X_OK):
            raise FatalError(f"{self.root} is not a writable folder")

    def _ensure_dirs(self, parts: list[str]) -> str:
        """Create (or verify) the folders of ``parts`` below the root; never through a link."""
        path = self._root_str
        for i, name in enumerate(parts):
            path = os.path.join(path, name)
            if path in self._dirs:
                self._dirs.move_to_end(path)
                continue
            rel = "/".join(parts[: i + 1])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise os_error(exc, f"creating folder {rel}", self.root) from exc
                st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(f"{rel} is a symlink in the mirror; refusing to write through it")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePath(f"cannot create folder {rel}: a file of that name exists (a "
                                 "file and a folder of the same name on the source)")
            self._dirs[path] = None
            if len(self._dirs) > _DIR_CACHE:
                self._dirs.popitem(last=False)
        return path

    def make_dir(self, path: str) -> None:
        self._ensure_dirs(split_path(path))

    def matches(self, path: str, size: int, mtime: float | None, window_s: float) -> bool:
        """True when the target exists as a regular file with this size and mtime."""
        return _current(os.path.join(self._root_str, *split_path(path)), size, mtime, window_s)

    def begin(self, path: str, size: int, mtime: float | None, window_s: float) -> PartFile | None:
        """Open the locked part file for ``path``, or None when the target is already current."""
        parts = split_path(path)
        if not parts:
            raise UnsafePath("a file job for the root folder itself")
        target = os.path.join(self._root_str, *parts)
        if _current(target, size, mtime, window_s):
            return None
        dir_path = self._ensure_dirs(parts[:-1])
        if self.group is not None:
            self.group.prime()
        name = parts[-1]
        fd, created = self._open_locked(os.path.join(dir_path, part_name(name)), path)
        if created:
            # A part file we created is empty and no other writer had one: nothing to resume,
            # nobody to have finished the file since the check above but a writer that just
            # renamed its own part away, which costs at worst one more download.
            return PartFile(self, dir_path, name, fd, 0)
        # Checked again under the lock: a concurrent writer may have just finished this file.
        if _current(target, size, mtime, window_s):
            PartFile(self, dir_path, name, fd, 0).discard()
            return None
        return PartFile(self, dir_path, name, fd, os.fstat(fd).st_size)

    def _open_locked(self, part_path: str, path: str) -> tuple[int, bool]:
        """Open and flock the part file, making sure the lock is on the file the name holds.

        Also says whether this call created the file (the common case, a file never fetched).
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(10):
            created = True
            try:
                try:
                    fd = os.open(part_path, flags | os.O_EXCL, 0o644)
                except FileExistsError:  # a crash's leftover, or another writer's
                    created = False
                    fd = os.open(part_path, flags, 0o644)
            except OSError as exc:
                raise os_error(exc, f"opening the part file of {path}", self.root) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Busy(f"{path} is being written by another process on this host") from None
            try:
                same = os.lstat(part_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, created
            os.close(fd)  # renamed or removed by its previous holder meanwhile: open afresh
        raise Busy(f"{path}: its part file keeps changing under us")


def _current(target: str, size: int, mtime: float | None, window_s: float) -> bool:
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    return mtime is None or abs(st.st_mtime_ns / 1e9 - mtime) <= window_s


class Placement:
    """Which disk each shard is written to."""

    def __init__(self, disks: dict[int, Disk]) -> None:
        self._disks = dict(disks)
        self._distinct = tuple({id(d): d for d in self._disks.values()}.values())

    @classmethod
    def single(cls, disk: Disk, shards: int) -> Placement:
        return cls({shard: disk for shard in range(shards)})

    @property
    def shards(self) -> list[int]:
        return sorted(self._disks)

    @property
    def disks(self) -> list[Disk]:
        return list(self._distinct)

    def syncing(self) -> int:
        """Files written and waiting only for their group's syncs, on every disk."""
        return sum(d.group.waiting for d in self._distinct if d.group is not None)

    def disk_for(self, shard: int) -> Disk:
        try:
            return self._disks[shard]
        except KeyError:
            raise FatalError(f"this worker has no disk for shard {shard}") from None


__all__ = ["NAME_MAX", "PART_SUFFIX", "Disk", "PartFile", "Placement", "check_name", "os_error",
           "part_name", "split_path"]
