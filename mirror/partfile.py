"""A file being written under a mirror root: its ``.part``, checks, flushes and rename.

Every file is written to ``<name>.mirror.part`` beside its target (a hashed hidden name when
the name is too long for the suffix), locked with flock against a second writer on this host
(``Disk.begin`` opens it), checked against the listed size and MD5, stamped with the remote
mtime, flushed (``--fsync``: on its own, or in a round shared with other files, see
``mirror.groupsync``), then renamed into place; ``rename`` replaces a symlink instead of
writing through it. Everything here is blocking and runs in a disk thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mirror.errors import DiskFull, FatalError, IntegrityError, MirrorError, UnsafePath
from mirror.groupsync import fsync_dir, start_writeback

if TYPE_CHECKING:
    from mirror.disk import Disk

PART_SUFFIX = ".mirror.part"
NAME_MAX = 255
# With --fsync, a part's bytes are sent on to the disk every this many (start_writeback): on
# 20 files of 50 MB the device then worked while the bytes arrived, not after.
WRITEBACK_EVERY = 8 << 20


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
        self.synced = False  # its bytes are on the disk (fsynced on its own)
        self._sent_back = size  # bytes up to here were handed to the disk's writeback

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
        self._sent_back = min(self._sent_back, offset)
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
        self._write_back()

    def _write_back(self) -> None:
        """Start the disk writing what arrived, every ``WRITEBACK_EVERY`` bytes (durable
        runs only: a file not flushed need not reach the disk soon)."""
        if self._disk.fsync and self.size - self._sent_back >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._sent_back, self.size - self._sent_back)
            self._sent_back = self.size

    def write_from(self, body: DirectSource, track_md5: bool,
                   on_bytes: Callable[[int], None]) -> None:
        """Append what ``body`` copies from its socket; ``size`` follows every block, so a
        failure part-way leaves a part file to resume from."""
        if track_md5 and self._md5 is None:
            self._md5 = self._hash_prefix()

        def written(n: int) -> None:
            self.size += n
            self._write_back()
            on_bytes(n)

        try:
            body.copy_to(self._fd, self.size, self._md5 if track_md5 else None, written)
        except OSError as exc:
            self._md5 = None  # it may hold bytes that did not reach the file: hash afresh
            raise os_error(exc, f"writing {self.target}", self._disk.root) from exc

    def commit(self, expected_size: int, mtime: float | None, md5: str | None) -> None:
        """Check, stamp, flush (``disk.fsync``) and rename into place, one file on its own:
        the path of ``--no-fsync`` and of per-file fsync. On a mismatch the part is deleted."""
        self.prepare(expected_size, mtime, md5)
        try:
            if self._disk.fsync:
                self.sync_data()
            self.rename()
            if self._disk.fsync:
                fsync_dir(self._dir)  # the rename itself, before the job is acked
        except OSError as exc:
            raise os_error(exc, f"finishing {self.target}", self._disk.root) from exc
        finally:
            self.close()

    def prepare(self, expected_size: int, mtime: float | None, md5: str | None) -> None:
        """Check the bytes against the listing and stamp the mtime; the part stays open.

        On a mismatch the part is deleted. The mtime is set before any flush, so that the
        flush covers it too."""
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
        if mtime is not None:
            ns = int(mtime * 1_000_000_000)
            try:
                os.utime(self._fd, ns=(ns, ns))
            except OSError as exc:
                raise os_error(exc, f"finishing {self.target}", self._disk.root) from exc

    @property
    def dir_path(self) -> str:
        return self._dir

    def sync_data(self) -> None:
        """fsync the part (raises OSError); a later group round skips its data sync."""
        os.fsync(self._fd)
        self.synced = True

    def rename(self) -> None:
        """Put the part in place (raises OSError); it stays open and locked until closed."""
        os.rename(self._part_path(), self.target)
        self._renamed = True

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


def finish(part: PartFile, data: bytes, track: bool, size: int, mtime: float | None,
           md5: str | None) -> None:
    """The whole commit of one file on its own (``--no-fsync``, per-file fsync)."""
    if data:
        part.write(data, track)
    part.commit(size, mtime, md5)


def prepare(part: PartFile, data: bytes, track: bool, size: int, mtime: float | None,
            md5: str | None, own_sync: bool) -> None:
    """What a file's writer does before it joins a group round."""
    if data:
        part.write(data, track)
    part.prepare(size, mtime, md5)
    if own_sync:
        try:
            part.sync_data()
        except OSError as exc:
            part.discard()  # what the disk holds is unknown (see mirror.groupsync)
            raise os_error(exc, f"flushing {part.target}", part._disk.root) from exc
