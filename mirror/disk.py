"""One mirror root on a local disk, and the only code that writes under it.

Rules kept here (DESIGN "Rules that keep data safe"):
- a remote path maps to the same relative path under the root, component by component; a
  component that is empty, ``.``, ``..``, holds NUL or ``/``, is not valid UTF-8, is longer than
  NAME_MAX bytes, or ends with our part suffix is refused (``UnsafePath``), never rewritten;
- every file is written to ``<name>.mirror.part`` beside its target (a hashed hidden name when
  the name is too long for the suffix), locked with flock against a second writer on this host,
  checked against the listed size and MD5, stamped with the remote mtime, then renamed;
- symlinks under the root are never followed: every folder on the way is checked with lstat,
  files are opened with O_NOFOLLOW, and rename replaces a link instead of writing through it.

Everything here is blocking and runs in a worker thread (see ``Disk.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mirror.diskpool import DiskPool
from mirror.errors import Busy, DiskFull, FatalError, IntegrityError, MirrorError, UnsafePath

T = TypeVar("T")
PART_SUFFIX = ".mirror.part"
NAME_MAX = 255
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


def part_name(name: str) -> str:
    if len(name.encode("utf-8")) + len(PART_SUFFIX) <= NAME_MAX:
        return name + PART_SUFFIX
    return "." + hashlib.sha1(name.encode("utf-8")).hexdigest()[:24] + PART_SUFFIX


def os_error(exc: OSError, what: str, root: Path) -> MirrorError:
    """Translate a filesystem error; disk-wide problems are fatal for this worker."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left on the disk of {root} while {what}; free space or "
                        "move its shards to another disk, then restart the worker")
    if exc.errno == errno.ENAMETOOLONG:
        return UnsafePath(f"{what}: name too long for the local filesystem")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP):
        return UnsafePath(f"{what}: a file and a folder of the same name ({exc.strerror})")
    return FatalError(f"cannot write under {root} while {what}: {exc.strerror or exc}")


class PartFile:
    """An open, locked ``.part`` file; ``size`` is how many bytes it already holds."""

    def __init__(self, disk: Disk, dir_path: str, name: str, fd: int, size: int) -> None:
        self._disk = disk
        self._dir = dir_path
        self.name = name
        self.part = part_name(name)
        self._fd = fd
        self.size = size
        self._md5: hashlib._Hash | None = None
        self._renamed = False

    @property
    def target(self) -> str:
        return os.path.join(self._dir, self.name)

    def _part_path(self) -> str:
        return os.path.join(self._dir, self.part)

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def restart(self, offset: int = 0) -> None:
        """Forget everything after ``offset`` (0: start over)."""
        os.ftruncate(self._fd, offset)
        self.size = offset
        self._md5 = None

    def _hash_prefix(self) -> hashlib._Hash:
        h = hashlib.md5()
        remaining, pos = self.size, 0
        while remaining > 0:
            block = os.pread(self._fd, min(remaining, 1 << 20), pos)
            if not block:
                break
            h.update(block)
            pos += len(block)
            remaining -= len(block)
        return h

    def write(self, data: bytes, track_md5: bool) -> None:
        self.write_many([data], track_md5)

    def write_many(self, chunks: list[bytes], track_md5: bool) -> None:
        """Append the chunks with as few system calls as possible (no joining copy)."""
        try:
            if track_md5 and self._md5 is None:
                self._md5 = self._hash_prefix()
            views = [memoryview(c) for c in chunks if c]
            pos = self.size
            while views:
                # pwritev may write less than asked (a disk filling up): go on from there
                written = os.pwritev(self._fd, views[:IOV_MAX], pos)
                if written <= 0:
                    raise OSError(errno.ENOSPC, "no byte written")
                pos += written
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            raise os_error(exc, f"writing {self.target}", self._disk.root) from exc
        for chunk in chunks:
            if self._md5 is not None:
                self._md5.update(chunk)
            self.size += len(chunk)

    def write_from(self, body: DirectSource, track_md5: bool,
                   on_bytes: Callable[[int], None]) -> None:
        """Append what ``body`` copies from its socket; ``size`` follows every block, so a
        failure part-way leaves a part file to resume from."""
        if track_md5 and self._md5 is None:
            self._md5 = self._hash_prefix()

        def written(n: int) -> None:
            self.size += n
            on_bytes(n)

        try:
            body.copy_to(self._fd, self.size, self._md5 if track_md5 else None, written)
        except OSError as exc:
            self._md5 = None  # it may hold bytes that did not reach the file: hash afresh
            raise os_error(exc, f"writing {self.target}", self._disk.root) from exc

    def commit(self, expected_size: int, mtime: float | None, md5: str | None) -> None:
        """Check, stamp and rename into place. On a mismatch the part is deleted."""
        if self.size != expected_size:
            self.discard()
            raise IntegrityError(
                f"{self.target}: got {self.size} bytes, the listing says {expected_size}"
            )
        if md5 is not None:
            got = (self._md5 or self._hash_prefix()).hexdigest()
            if got != md5:
                self.discard()
                raise IntegrityError(f"{self.target}: MD5 {got} does not match the source's {md5}")
        try:
            if self._disk.fsync:
                os.fsync(self._fd)
            if mtime is not None:
                ns = int(mtime * 1_000_000_000)
                os.utime(self._fd, ns=(ns, ns))
            os.rename(self._part_path(), self.target)
            self._renamed = True
        except OSError as exc:
            raise os_error(exc, f"finishing {self.target}", self._disk.root) from exc
        finally:
            self.close()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._part_path())
        self.close()

    def close(self) -> None:
        """Close and unlock; a part file with bytes in it stays for a later resume."""
        if self._fd >= 0:
            if self.size == 0 and not self._renamed:  # nothing to resume: leave no trace
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._part_path())
            os.close(self._fd)
            self._fd = -1


IOV_MAX = 1024  # buffers per pwritev call (Linux's limit)


class DirectSource(Protocol):
    """What ``PartFile.write_from`` reads (``mirror.sources.direct.DirectBody``)."""

    def copy_to(self, fd: int, pos: int, md5: Any, on_bytes: Callable[[int], None]) -> None: ...


class Disk:
    """A mirror root. Methods are blocking; call them through ``await disk.run(...)``."""

    def __init__(self, root: Path, *, fsync: bool = True,
                 pool: DiskPool | None = None) -> None:
        self.root = root
        self.fsync = fsync
        self._root_str = str(root)
        self._dirs: OrderedDict[str, None] = OrderedDict()
        self._pool = pool

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

    @classmethod
    def single(cls, disk: Disk, shards: int) -> Placement:
        return cls({shard: disk for shard in range(shards)})

    @property
    def shards(self) -> list[int]:
        return sorted(self._disks)

    @property
    def disks(self) -> list[Disk]:
        return list({id(d): d for d in self._disks.values()}.values())

    def disk_for(self, shard: int) -> Disk:
        try:
            return self._disks[shard]
        except KeyError:
            raise FatalError(f"this worker has no disk for shard {shard}") from None
