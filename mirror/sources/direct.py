"""The rest of a large plain-HTTP body, copied from the socket to the file in a disk thread.

Through aiohttp every received block of a large file became a new bytes object on the event
loop's thread (socket to loop buffer, buffer to bytes, parser to payload bytes, then the
write): profiles of 50 MB files showed the one loop thread copying memory at under 1 GB/s
while the second core idled. Here, once the response headers are in, the connection stops
reading on the loop and a disk thread moves the remaining ``length`` bytes with ``splice``
(socket to pipe to file, no copy through user space) or, when a checksum must be computed, with
``readv`` into one reused buffer. The connection is closed afterwards, never reused.

Errors keep their meaning: the socket side raises ``SourceUnavailable`` (cut short, reset)
or ``Stalled`` (read timeout); an ``OSError`` that escapes comes from the file side.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from mirror.errors import SourceUnavailable, Stalled

PIPE_SIZE = 1 << 20  # bytes moved per splice; the pipe is grown to match where allowed
_F_SETPIPE_SZ = 1031
_POLL_SLICE_S = 0.2  # how soon a cancelled copy notices


class Digest(Protocol):
    def update(self, data: Any, /) -> None: ...


class DirectBody:
    """``length`` more bytes of one response, on a duplicate of its socket (``fd``).

    ``head`` holds what had already arrived on the loop before the hand-over.
    """

    def __init__(self, fd: int, head: bytes, length: int, timeout_s: float, what: str,
                 on_close: Callable[[], None]) -> None:
        self.fd = fd
        self.head = head
        self.length = length
        self._timeout_s = timeout_s
        self._what = what
        self._on_close = on_close
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask a running ``copy_to`` to stop at its next poll (it raises ``Stalled``)."""
        self._cancelled.set()

    def close(self) -> None:
        """Close the duplicate and the connection (call from the loop, after the copy)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._on_close()

    def copy_to(self, fd: int, pos: int, digest: Digest | None,
                on_bytes: Callable[[int], None]) -> None:
        """Blocking: write ``head`` and the ``length`` bytes at ``pos`` of file ``fd``.

        ``on_bytes(n)`` is called for every block written (it may raise to stop the copy).
        The file holds every byte reported, also when this raises.
        """
        if self.head:
            if digest is not None:
                digest.update(self.head)
            _pwrite_all(fd, memoryview(self.head), pos)
            pos += len(self.head)
            on_bytes(len(self.head))
        if digest is None and hasattr(os, "splice"):
            self._splice(fd, pos, on_bytes)
        else:
            self._read(fd, pos, digest, on_bytes)

    def _splice(self, fd: int, pos: int, on_bytes: Callable[[int], None]) -> None:
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):  # above the system's pipe-max-size: keep 64 KiB
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
            left = self.length
            while left:
                n = self._take(left, lambda k: os.splice(
                    self.fd, w, min(k, PIPE_SIZE),
                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK))
                moved = 0
                while moved < n:  # pipe to file: a disk error here is the file's
                    moved += os.splice(r, fd, n - moved, offset_dst=pos + moved,
                                       flags=os.SPLICE_F_MOVE)
                pos += n
                left -= n
                on_bytes(n)
        finally:
            os.close(r)
            os.close(w)

    def _read(self, fd: int, pos: int, digest: Digest | None,
              on_bytes: Callable[[int], None]) -> None:
        buffer = memoryview(bytearray(min(self.length, PIPE_SIZE) or 1))
        left = self.length
        while left:
            n = self._take(left, lambda k: os.readv(self.fd, [buffer[:min(k, len(buffer))]]))
            block = buffer[:n]
            if digest is not None:
                digest.update(block)
            _pwrite_all(fd, block, pos)
            pos += n
            left -= n
            on_bytes(n)

    def _take(self, left: int, receive: Callable[[int], int]) -> int:
        """Bytes one ``receive(at_most)`` took from the socket, waiting while there are
        none yet; the socket's failures and an early end become source errors."""
        while True:
            self._check()
            try:
                n = receive(left)
            except BlockingIOError:
                self._wait()
                continue
            except OSError as exc:
                raise self._socket_error(exc) from exc
            if n == 0:
                raise self._cut_short(left)
            return n

    def _wait(self) -> None:
        """Until the socket is readable; ``Stalled`` after the read timeout or a cancel."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stalled(f"{self._what}: no data from the source within the read timeout")
            if poller.poll(min(left, _POLL_SLICE_S) * 1000):
                return

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise Stalled(f"{self._what}: transfer stopped")

    def _cut_short(self, left: int) -> SourceUnavailable:
        return SourceUnavailable(f"{self._what}: the response body was cut short ({left} "
                                 "bytes missing)")

    def _socket_error(self, exc: OSError) -> SourceUnavailable:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
            return SourceUnavailable(f"{self._what}: the connection was reset ({exc.strerror})")
        return SourceUnavailable(f"{self._what}: reading the body: {exc.strerror or exc}")


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    while data:
        written = os.pwrite(fd, data, pos)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no byte written")
        data = data[written:]
        pos += written


__all__ = ["Digest", "DirectBody"]
