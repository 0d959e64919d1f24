"""Group commit: files settled within a few milliseconds share their trips to the disk.

A job is acknowledged only once its file is durably in place (DESIGN, "Rules that keep data
safe"). Paid one file at a time that is an fsync per file (and, to be exact, one of its folder
too, for the rename). Here the files of one mirror root that are ready at about the same time
are made durable together, in *rounds* run one at a time by a disk thread. Every file goes
through two of them:

1. its ``.part`` holds all its bytes and the remote mtime (written, checked and stamped before
   it joins), still open and locked;
2. a round's ``syncfs`` on the root puts the bytes and inodes of its parts on the disk; only
   then does the round rename them into place;
3. the next round's ``syncfs`` puts those renames on the disk; only then do their callers
   return, and the worker acks their jobs.

Each ``syncfs`` does both jobs at once: it makes the renames of the round before durable and
the bytes of the files that gathered since. Two syncs of its own for each group made a quarter
to a third more sync calls and was no faster (``bench/RESULTS.md``). When no new file came, a
round is just the sync of the last renames.

Why the bytes are synced before the rename, and not everything once after it: POSIX promises
no order between the two. Depending on the file system and its mode (ext4 or ext3 with
``data=writeback``, old XFS's "NULL files", network and FUSE file systems), a crash could
leave the target with the listed size and mtime over blocks never written: zeros or stale
bytes. (ext4's default ``data=ordered`` would rather leave a short file, which the size check
catches.) The skip check (size and mtime match: the file is current) would trust such a file
forever. With the bytes durable before any rename, a crash at any point leaves each file
complete in place or a ``.part`` to resume, never a complete-looking wrong file. The sync
after the rename is what the ack needs: an acked job is gone from the broker, so its rename
must not be lost either.

A failed sync fails every file of its round (those it was to rename and those renamed by the
round before) with the translated error (``ENOSPC``: disk full; ``EIO``: fatal), none of them
is acked, the parts it was to flush are not renamed but deleted: after a writeback error Linux
marks the pages clean, so what the disk holds is unknown and resuming on it could keep wrong
bytes (without an MD5 nothing would notice). Since Linux 5.8 ``syncfs`` reports writeback
errors of the whole file system seen since the root was opened (so the root is opened before
the first part file); an error of another file on the same file system fails the round too,
which is the safe side. Where ``syncfs`` is missing (not Linux, or ``ENOSYS``) each part is
fsynced on its own, then renamed, then each folder of the round is fsynced once.

Scheduling (on the event loop): one round runs at a time per root, and files ready meanwhile
gather for the next one. That starts as soon as the running one ends if it renamed files (their
sync is due); otherwise ``window_s`` after the first file waiting was ready, or at once when
``max_files`` files or ``max_bytes`` are waiting. Under load the rounds follow each other and
the window hardly matters; with few transfers it is added to every file's wait: 1 ms was as
fast as none and made 40% fewer rounds at 16 transfers, 2 and 5 ms were slower. Several roots on
one file system each run their own rounds; that only costs a sync more. A large file
(``own_sync_bytes`` or more) is fsynced on its own by its writer, in its thread, and joins a
round renamed before its sync, done with that one sync: a round then does not wait for its
writeback, and it waits for no other file's. The figures behind these choices are in
``bench/RESULTS.md`` (``bench/fsync.py``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mirror.errors import MirrorError, TransientError

if TYPE_CHECKING:
    from mirror.partfile import PartFile

Translate = Callable[[OSError, str, Path], MirrorError]
Errors = list[MirrorError | None]
Entry = tuple["PartFile", "asyncio.Future[None]"]


@dataclass
class Outcome:
    """What a round did: an error (or None) per fresh and per prior part, and which fresh
    parts it renamed (they wait for the next round's sync)."""

    fresh: Errors
    prior: Errors
    waiting: list[int]


class RunAlone(Protocol):
    """``Disk.run``: a blocking call in a disk thread of its own."""

    def __call__(self, fn: Callable[[list[PartFile], list[PartFile]], Outcome],
                 fresh: list[PartFile], prior: list[PartFile], /, *,
                 alone: bool) -> Awaitable[Outcome]: ...


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


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Have the kernel start writing ``nbytes`` of ``fd`` from ``offset`` to the disk now,
    without waiting for it (Linux's ``sync_file_range``; elsewhere nothing). A large file's
    bytes then go to the disk while the rest still arrives, instead of all at its fsync: the
    kernel starts writing back on its own only at 10% of memory dirty or after 30 s. Errors
    are left to the fsync that follows."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


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
                 window_s: float = 0.001, max_files: int = 256, max_bytes: int = 32 << 20,
                 own_sync_bytes: int = 8 << 20) -> None:
        self.root = root
        self.window_s = window_s
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.own_sync_bytes = own_sync_bytes
        self.rounds = 0  # rounds run, files settled, sync calls made (syncfs or fsync)
        self.files = 0
        self.syncs = 0
        self.waiting = 0  # files in ``settle`` now: written, waiting only for their syncs
        self.fallback = _SYNCFS is None  # per-file fsync instead of syncfs
        self._run = run
        self._translate = translate
        self._fd = -1
        self._open_lock = threading.Lock()
        self._pending: list[Entry] = []  # complete parts waiting for a round
        self._renamed: list[Entry] = []  # renamed by the last round, waiting for the next
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

    def _round(self, fresh: list[PartFile], prior: list[PartFile]) -> Outcome:
        """One round: ``prior`` were renamed by the round before and wait for a sync;
        ``fresh`` are complete parts. One sync makes the renames of ``prior`` and the bytes
        of ``fresh`` durable, then ``fresh`` are renamed (and wait for the next round);
        parts fsynced on their own are renamed before the sync and done with it."""
        out = Outcome([None] * len(fresh), [None] * len(prior), [])
        try:
            self.prime()
            early = [i for i, part in enumerate(fresh) if part.synced]
            late = [i for i, part in enumerate(fresh) if not part.synced]
            for i in early:
                self._rename(fresh, i, out.fresh)
            if not self.fallback:
                try:
                    self.syncs += 1
                    self.sync_fs()
                except OSError as exc:
                    if exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP):
                        self._failed(exc, fresh, prior, late, out)
                        return out
                    self.fallback = True
                else:
                    for i in late:
                        if self._rename(fresh, i, out.fresh):
                            out.waiting.append(i)
                    return out
            self._per_file(fresh, prior, early, late, out)
            return out
        finally:
            for part in fresh:
                part.close()

    def _rename(self, parts: list[PartFile], i: int, errors: Errors) -> bool:
        try:
            parts[i].rename()
            return True
        except OSError as exc:
            errors[i] = self._translate(exc, f"finishing {parts[i].target}", self.root)
            return False

    def _failed(self, exc: OSError, fresh: list[PartFile], prior: list[PartFile],
                late: list[int], out: Outcome) -> None:
        """A failed sync fails every file of the round; parts it was to flush are deleted.
        Each caller gets an exception of its own (a raised one collects its task's frames)."""
        what = f"flushing {len(fresh) + len(prior)} files to disk"
        out.fresh[:] = [self._translate(exc, what, self.root) for _ in fresh]
        out.prior[:] = [self._translate(exc, what, self.root) for _ in prior]
        for i in late:
            fresh[i].discard()

    def _per_file(self, fresh: list[PartFile], prior: list[PartFile], early: list[int],
                  late: list[int], out: Outcome) -> None:
        """Without syncfs: fsync each part, rename it, then fsync each folder once."""
        folders: dict[str, list[tuple[Errors, int]]] = {}
        for j, part in enumerate(prior):
            folders.setdefault(part.dir_path, []).append((out.prior, j))
        for i in early:
            if out.fresh[i] is None:
                folders.setdefault(fresh[i].dir_path, []).append((out.fresh, i))
        for i in late:
            part = fresh[i]
            try:
                self.syncs += 1
                part.sync_data()
            except OSError as exc:
                out.fresh[i] = self._translate(exc, f"flushing {part.target}", self.root)
                part.discard()
                continue
            if self._rename(fresh, i, out.fresh):
                folders.setdefault(part.dir_path, []).append((out.fresh, i))
        for folder, members in folders.items():
            try:
                self.syncs += 1
                fsync_dir(folder)
            except OSError as exc:
                for errors, i in members:
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
        self.waiting += 1
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
        finally:
            self.waiting -= 1

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._round_task is not None:
            return
        if self._renamed:  # their sync is due now; what gathered meanwhile shares it
            self._start(loop)
            return
        if not self._pending:
            return
        due = self._first + self.window_s
        if (len(self._pending) >= self.max_files or self._pending_bytes >= self.max_bytes
                or loop.time() >= due):
            self._start(loop)
        elif self._timer is None:
            self._timer = loop.call_at(due, self._timer_fired, loop)

    def _timer_fired(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._round_task is None and (self._pending or self._renamed):
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fresh = self._pending[:self.max_files]
        del self._pending[:self.max_files]
        self._pending_bytes = sum(p.size for p, _ in self._pending)
        self._first = loop.time()  # the rest waited already: due when this round ends
        prior, self._renamed = self._renamed, []
        self.rounds += 1
        self.files += len(fresh)
        self._round_task = loop.create_task(self._one_round(loop, fresh, prior))

    async def _one_round(self, loop: asyncio.AbstractEventLoop, fresh: list[Entry],
                         prior: list[Entry]) -> None:
        try:
            out = await self._run(self._round, [p for p, _ in fresh], [p for p, _ in prior],
                                  alone=True)
        except Exception as exc:  # the pool stopped under us: nobody is acked
            out = Outcome([TransientError(f"the disk round did not finish: {exc!r}")
                           for _ in fresh],
                          [TransientError(f"the disk round did not finish: {exc!r}")
                           for _ in prior], [])
        finally:
            self._round_task = None
        waiting = set(out.waiting)
        self._renamed = [fresh[i] for i in out.waiting]
        for (_, future), error in zip(prior, out.prior, strict=True):
            _settle(future, error)
        for i, ((_, future), error) in enumerate(zip(fresh, out.fresh, strict=True)):
            if i not in waiting:
                _settle(future, error)
        self._schedule(loop)


def _settle(future: asyncio.Future[None], error: MirrorError | None) -> None:
    if future.done():  # its caller is gone
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


__all__ = ["GroupSync", "fsync_dir", "start_writeback", "syncfs"]
