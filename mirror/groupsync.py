"""Group commit: files settled within a few milliseconds share their trips to the disk.

A job is acknowledged only once its file is durably in place (DESIGN, "Rules that keep data
safe"). Paid one file at a time that is an fsync per file (and, to be exact, one of its folder
too, for the rename). Here the files of one mirror root that are ready at about the same time
are made durable together, in one *round* run by one disk thread:

1. every ``.part`` of the round already holds all its bytes and the remote mtime (written,
   checked and stamped before it joined), still open and locked;
2. ``syncfs`` on the root: the data and inodes of every part are on the disk;
3. each part is renamed into place;
4. ``syncfs`` again: the renames are on the disk;
5. only now do the callers return, and the worker acks their jobs.

Why two syncs and not one after the renames: no file system promises that a rename reaches
the disk after the data written before it. If the rename were durable first, a crash could
leave the target with the listed size and mtime over blocks never written (zeros, or another
file's old bytes, depending on the file system: ext4 without ``auto_da_alloc`` on a new name,
XFS's "NULL files", most file systems with ``data=writeback`` semantics). The skip check
(size and mtime match: the file is current) would trust that file forever. With the data
made durable before any rename, a crash at any point leaves each file either complete in
place or a ``.part`` to resume, never a complete-looking wrong file. The second sync is what
the ack needs: an acked job is gone from the broker, so its rename must not be lost.

A failed sync fails every file of its round with the translated error (``ENOSPC``: disk
full; ``EIO``: fatal), none of them is acked, and after a failed data sync nothing of the
round is renamed and its parts are deleted: after a writeback error Linux marks the pages
clean, so what the disk holds is unknown and resuming on it could keep wrong bytes (without
an MD5 nothing would notice). Since Linux 5.8 ``syncfs`` reports writeback errors of the
whole file system seen since the root was opened (so the root is opened before the first
part file); an error of another file on the same file system fails the round too, which is
the safe side. Where ``syncfs`` is missing (not Linux, or ``ENOSYS``) each part is fsynced
on its own, then renamed, then each folder of the round is fsynced once.

Scheduling (on the event loop): a round starts ``window_s`` after the first file of it was
ready, or at once when ``max_files`` files or ``max_bytes`` are waiting; one round runs at a
time per root, and files ready meanwhile gather for the next one, which starts as soon as the
running one ends. Several roots on one file system each run their own rounds; that only
costs a sync more. A large file (``own_sync_bytes`` or more) is fsynced on its own by its
writer, in its thread (its bytes would otherwise make the whole round wait for their
writeback), and joins a round for the rename only; a round of such files alone skips the
data sync. The figures behind the defaults are in ``bench/RESULTS.md`` (``bench/fsync.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mirror.errors import MirrorError, TransientError

if TYPE_CHECKING:
    from mirror.partfile import PartFile

Translate = Callable[[OSError, str, Path], MirrorError]
Errors = list[MirrorError | None]


class RunAlone(Protocol):
    """``Disk.run``: a blocking call in a disk thread of its own."""

    def __call__(self, fn: Callable[[list[PartFile]], Errors], parts: list[PartFile], /, *,
                 alone: bool) -> Awaitable[Errors]: ...


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs  # a foreign call releases the GIL
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def syncfs(fd: int) -> None:
    """Flush the whole file system holding ``fd`` (its data, inodes and journal)."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupSync:
    """The rounds of one mirror root. ``settle`` on the loop; ``prime`` in a disk thread."""

    def __init__(self, root: Path, run: RunAlone, translate: Translate, *,
                 window_s: float = 0.002, max_files: int = 256, max_bytes: int = 32 << 20,
                 own_sync_bytes: int = 8 << 20) -> None:
        self.root = root
        self.window_s = window_s
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.own_sync_bytes = own_sync_bytes
        self.rounds = 0  # rounds run, files settled, sync calls made (syncfs or fsync)
        self.files = 0
        self.syncs = 0
        self.fallback = _SYNCFS is None  # per-file fsync instead of syncfs
        self._run = run
        self._translate = translate
        self._fd = -1
        self._open_lock = threading.Lock()
        self._pending: list[tuple[PartFile, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._first = 0.0  # loop time the oldest waiting file became ready
        self._timer: asyncio.TimerHandle | None = None
        self._round_task: asyncio.Task[None] | None = None

    # -- in disk threads -------------------------------------------------------------------

    def prime(self) -> None:
        """Open the root before any part file is written, so that syncfs reports every
        writeback error of their bytes (the kernel reports those seen since the open)."""
        if self._fd >= 0:
            return
        with self._open_lock:
            if self._fd < 0:
                try:
                    fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    raise self._translate(exc, "opening the mirror root", self.root) from exc
                weakref.finalize(self, os.close, fd)
                self._fd = fd

    def sync_fs(self) -> None:
        """One syncfs of the root's file system (a test overrides it to fail)."""
        syncfs(self._fd)

    def _round(self, parts: list[PartFile]) -> Errors:
        errors: Errors = [None] * len(parts)
        try:
            self.prime()
            if not self._data_durable(parts, errors):
                for part in parts:
                    part.discard()
                return errors
            renamed: list[int] = []
            for i, part in enumerate(parts):
                if errors[i] is None:
                    try:
                        part.rename()
                        renamed.append(i)
                    except OSError as exc:
                        errors[i] = self._translate(exc, f"finishing {part.target}", self.root)
            if renamed:
                self._renames_durable(parts, renamed, errors)
            return errors
        finally:
            for part in parts:
                part.close()

    def _data_durable(self, parts: list[PartFile], errors: Errors) -> bool:
        """Phase one; False when the whole round failed (``errors`` says why)."""
        waiting = [i for i, part in enumerate(parts) if not part.synced]
        if not waiting:
            return True
        if not self.fallback:
            try:
                self.syncs += 1
                self.sync_fs()
                return True
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP):
                    # each caller gets an error of its own (a raised exception collects the
                    # traceback of its task)
                    what = f"flushing {len(waiting)} files to disk"
                    errors[:] = [self._translate(exc, what, self.root) for _ in parts]
                    return False
                self.fallback = True
        for i in waiting:
            part = parts[i]
            try:
                self.syncs += 1
                part.sync_data()
            except OSError as exc:
                errors[i] = self._translate(exc, f"flushing {part.target}", self.root)
                part.discard()
        return True

    def _renames_durable(self, parts: list[PartFile], renamed: list[int],
                         errors: Errors) -> None:
        """Phase two: the renames on the disk, or every renamed file of the round failed."""
        if not self.fallback:
            try:
                self.syncs += 1
                self.sync_fs()
            except OSError as exc:
                what = f"flushing {len(renamed)} renames to disk"
                for i in renamed:
                    errors[i] = self._translate(exc, what, self.root)
            return
        folders: dict[str, list[int]] = {}
        for i in renamed:
            folders.setdefault(parts[i].dir_path, []).append(i)
        for folder, members in folders.items():
            try:
                self.syncs += 1
                fsync_dir(folder)
            except OSError as exc:
                for i in members:
                    errors[i] = self._translate(exc, f"flushing the folder {folder}",
                                                self.root)

    # -- on the event loop -----------------------------------------------------------------

    async def settle(self, part: PartFile) -> None:
        """Make ``part`` (complete, checked, stamped) durably the file in place; raises the
        error of its round. The part is closed when this returns, whatever happened."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (part, future)
        if not self._pending:
            self._first = loop.time()
        self._pending.append(entry)
        self._pending_bytes += part.size
        self._schedule(loop)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if any(e is entry for e in self._pending):  # not handed to a round: still ours
                self._pending = [e for e in self._pending if e is not entry]
                self._pending_bytes -= part.size
                raise
            # A round holds the part: it must not be closed under it. A round is short.
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            raise

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._round_task is not None or not self._pending:
            return
        due = self._first + self.window_s
        if (len(self._pending) >= self.max_files or self._pending_bytes >= self.max_bytes
                or loop.time() >= due):
            self._start(loop)
        elif self._timer is None:
            self._timer = loop.call_at(due, self._timer_fired, loop)

    def _timer_fired(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._round_task is None and self._pending:
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._pending[:self.max_files]
        del self._pending[:self.max_files]
        self._pending_bytes = sum(p.size for p, _ in self._pending)
        self._first = loop.time()  # the rest waited already: due when this round ends
        self.rounds += 1
        self.files += len(batch)
        self._round_task = loop.create_task(self._one_round(loop, batch))

    async def _one_round(self, loop: asyncio.AbstractEventLoop,
                         batch: list[tuple[PartFile, asyncio.Future[None]]]) -> None:
        try:
            errors = await self._run(self._round, [p for p, _ in batch], alone=True)
        except Exception as exc:  # the pool stopped under us: nobody is acked
            errors = [TransientError(f"the disk round did not finish: {exc!r}")
                      for _ in batch]
        finally:
            self._round_task = None
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self._schedule(loop)


__all__ = ["GroupSync", "fsync_dir", "syncfs"]
