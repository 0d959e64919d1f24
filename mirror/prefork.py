"""Fetch processes forked before the event loop starts (``--processes N``).

A fetch process started with ``python -m mirror.fetchchild`` spends 60-150 ms on its
interpreter and imports, on cores that the worker is already listing on; a run of 20,000
small files got its first file 0.2 s after it started, rclone after 0.05 s. Forked from the
command before its event loop exists, a child has every module already and waits for its
setup line on a pipe at once. Forking is safe only while the process has one thread and no
event loop, so it happens there or not at all; a child that dies later is started again the
usual way (a new interpreter).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO


@dataclass
class Forked:
    """A forked child waiting for its setup line, and the parent's ends of its two pipes."""

    pid: int
    to_child: int
    from_child: int
    taken: bool = False  # a fetch pool owns it now (and closes it)


def fork_children(count: int, main: Callable[[IO[bytes], IO[bytes]], None]) -> list[Forked]:
    """Fork ``count`` children, each running ``main(requests, answers)`` and exiting.

    Returns no children where forking is not safe (other threads running) or not possible
    (no ``os.fork`` or ``os.pidfd_open``); the pool then starts its processes itself.
    """
    if (count < 1 or not hasattr(os, "fork") or not hasattr(os, "pidfd_open")
            or threading.active_count() > 1):
        return []
    try:
        os.close(os.pidfd_open(os.getpid()))  # Linux before 5.3 has none
    except OSError:
        return []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or a child could write the parent's buffered output again
    forked: list[Forked] = []
    for _ in range(count):
        fds: list[int] = []
        try:
            fds.extend(os.pipe())
            fds.extend(os.pipe())
            pid = os.fork()
        except OSError:  # out of processes or descriptors: the pool starts the rest itself
            for fd in fds:
                os.close(fd)
            break
        requests_r, requests_w, answers_r, answers_w = fds
        if pid == 0:
            code = 1
            try:
                os.close(requests_w)
                os.close(answers_r)
                for sibling in forked:  # else a child's pipe never ends while a sibling lives
                    os.close(sibling.to_child)
                    os.close(sibling.from_child)
                main(os.fdopen(requests_r, "rb", buffering=0),
                     os.fdopen(answers_w, "wb", buffering=0))
                code = 0
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                traceback.print_exc()  # as a started child's interpreter would
            finally:
                os._exit(code)  # never return into the parent's stack (click, atexit)
        os.close(requests_r)
        os.close(answers_w)
        forked.append(Forked(pid, requests_w, answers_r))
    return forked


def reap(forked: Sequence[Forked]) -> None:
    """End the children that no fetch pool took: closing their pipe makes them exit."""
    for child in forked:
        if not child.taken:
            child.taken = True
            os.close(child.to_child)
            os.close(child.from_child)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)


class ForkedProcess:
    """A forked child seen as an ``asyncio.subprocess.Process``: its pipes as streams, and
    its exit awaited through a pidfd (no thread blocked in ``waitpid``)."""

    def __init__(self, child: Forked, stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader) -> None:
        self.pid = child.pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(child.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    @classmethod
    async def connect(cls, child: Forked, limit: int) -> ForkedProcess:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(child.from_child, "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(child.to_child, "wb", buffering=0))
        return cls(child, asyncio.StreamWriter(transport, protocol, None, loop), reader)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            self.returncode = -1
        self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


__all__ = ["Forked", "ForkedProcess", "fork_children", "reap"]
